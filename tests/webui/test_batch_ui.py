"""The 任务 Jobs tab in headless Chromium: submit pasted text, watch it finish, play a line,
regenerate it, download the zip; a screenshot goes to tests/artifacts/."""
from __future__ import annotations

import io
import re
import time
import zipfile

import httpx

from browser import browser_page, requires_browser
from conftest import ROOT
from integration.test_batch_app import jobs_app  # noqa: F401  (the app with a saved narrator voice)


def wait_text(locator, pattern: str, timeout: float = 120) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = locator.inner_text()
        if re.search(pattern, text):
            return text
        time.sleep(0.3)
    raise AssertionError(f"{pattern!r} never appeared; last: {locator.inner_text()[:300]}")


@requires_browser
def test_jobs_tab_submits_plays_regenerates_and_downloads(jobs_app):  # noqa: F811
    with browser_page(jobs_app.url) as page:
        page.get_by_role("tab", name="任务 Jobs").click()
        page.locator("#jobs-paste textarea").fill("First paragraph of the story.\n\nSecond paragraph.\n\nThe end.")
        page.locator("#jobs-voice input").click()
        page.get_by_role("option", name=re.compile("narrator")).click()
        page.locator("#jobs-submit").click()
        message = wait_text(page.locator("#jobs-message"), r"Submitted job_\w+: 3 line")
        job_id = re.search(r"job_\w+", message).group(0)
        wait_text(page.locator("#jobs-summary"), r"· done · 3/3 done")
        assert "Second paragraph." in page.locator("#jobs-lines").inner_text()
        page.locator("#jobs-line input").fill("2")
        page.locator("#jobs-line input").press("Enter")
        page.locator("#jobs-play").click()
        page.locator("#jobs-player audio[src]").first.wait_for(state="attached", timeout=30000)
        before = httpx.get(f"{jobs_app.url}/v1/jobs/{job_id}").json()["lines"][1]
        page.locator("#jobs-regenerate").click()
        wait_text(page.locator("#jobs-message"), "Line 2 queued again")
        deadline = time.time() + 60
        while time.time() < deadline:
            after = httpx.get(f"{jobs_app.url}/v1/jobs/{job_id}").json()["lines"]
            if after[1]["revision"] == 1 and after[1]["state"] == "done":
                break
            time.sleep(0.3)
        assert after[1]["seed"] != before["seed"] and after[1]["revision"] == 1
        wait_text(page.locator("#jobs-summary"), r"· done · 3/3 done")
        page.locator("#jobs-download").click()
        link = page.locator("#jobs-zip a").first
        link.wait_for(timeout=30000)
        archive = zipfile.ZipFile(io.BytesIO(httpx.get(link.get_attribute("href"), timeout=30).content))
        assert {"stitched.wav", "subtitles.srt", "manifest.jsonl"} <= set(archive.namelist())
        artifacts = ROOT / "tests" / "artifacts"
        artifacts.mkdir(exist_ok=True)
        page.screenshot(path=str(artifacts / "jobs_tab.png"), full_page=True)
