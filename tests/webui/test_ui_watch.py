"""Watching a request in the browser: progress per piece, the Backend tab, queue places, results and
errors that stay put. Screenshots land in tests/artifacts/ for a person to look at."""
from __future__ import annotations

import threading
import time

import pytest

from browser import browser_session, requires_browser
from conftest import ROOT, ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT, start_app, stop_app

pytestmark = [pytest.mark.slow, requires_browser]
ARTIFACTS = ROOT / "tests" / "artifacts"
# Long enough (about 20 s of work on a slow CI box) that the two requests behind it are still
# waiting when the Backend tab is read.
PIECES = 40
LONG_TEXT = "[pause:0.05]".join(f"这是第{n}句话，我们慢慢地读出来。" for n in range(1, PIECES + 1))


@pytest.fixture(scope="module")
def one_worker_app(tmp_path_factory):
    app = start_app(tmp_path_factory.mktemp("ui_watch"), "--engine", "lite", "--concurrency", "1",
                    "--queue-size", "4")
    yield app
    stop_app(app)


def fill_form(page, text: str) -> None:
    page.locator("#prompt-audio input[type=file]").set_input_files(str(ZERO_SHOT_PROMPT))
    page.locator("#prompt-text textarea").fill(ZERO_SHOT_TRANSCRIPT)
    page.locator("#text-input textarea").fill(text)
    page.wait_for_timeout(1500)          # the upload finishes before Generate is pressed


def result_text(page) -> str:
    return page.locator("#result").inner_text()


def test_progress_backend_tab_queue_place_and_lasting_results(one_worker_app):
    ARTIFACTS.mkdir(exist_ok=True)
    with browser_session() as open_page:
        first, third = open_page(one_worker_app.url), open_page(one_worker_app.url)
        fill_form(first, LONG_TEXT)
        first.get_by_role("button", name="生成 Generate").click()
        first.locator("#result").get_by_text(f"/{PIECES}").first.wait_for(timeout=60000)
        shown = result_text(first)
        assert "piece" in shown and f"/{PIECES}" in shown, shown
        first.screenshot(path=str(ARTIFACTS / "progress_piece_of_n.png"), full_page=True)

        # A second request from a script and a third from another browser wait behind the first.
        from gradio_client import Client, handle_file

        def scripted():
            Client(one_worker_app.url, verbose=False).predict(
                text="排队的请求。", mode="zero_shot", prompt_wav=handle_file(str(ZERO_SHOT_PROMPT)),
                prompt_text=ZERO_SHOT_TRANSCRIPT, instruct_text="", seed=2, speed=1.0, stream=False,
                normalize=True, api_name="/synthesize")

        second = threading.Thread(target=scripted)
        second.start()
        time.sleep(1.0)
        fill_form(third, "第三个请求。")
        third.get_by_role("button", name="生成 Generate").click()
        third.locator("#result").get_by_text("position").wait_for(timeout=30000)
        assert "Queued: position" in result_text(third), result_text(third)
        third.screenshot(path=str(ARTIFACTS / "queue_position.png"), full_page=True)

        first.get_by_role("tab", name="后台 Backend").click()
        first.wait_for_function("document.querySelector('#log-tail textarea').value.includes('piece')",
                                timeout=30000)
        first.wait_for_function("(() => { const t = document.querySelector('#jobs-table').innerText;"
                                " return t.includes('running') && t.includes('queued'); })()", timeout=30000)
        table = first.locator("#jobs-table").inner_text()
        assert "running" in table and "queued" in table, table
        tail = first.locator("#log-tail textarea").input_value()
        assert "piece" in tail and "req=" in tail
        first.screenshot(path=str(ARTIFACTS / "backend_tab_running_job.png"), full_page=True)
        first.get_by_role("tab", name="合成 Synthesize").click()

        first.locator("#result").get_by_text("Saved").wait_for(timeout=180000)
        second.join(timeout=180)
        third.locator("#result").get_by_text("Saved").wait_for(timeout=180000)

        # A new request clears the previous result at once.
        first.locator("#text-input textarea").fill("新的请求。[pause:1]" + "第二段话。" * 3)
        first.get_by_role("button", name="生成 Generate").click()
        first.wait_for_timeout(300)
        assert "Saved" not in result_text(first)
        first.locator("#result").get_by_text("Saved").wait_for(timeout=120000)

        # An error stays in the result area, with its request id, well after a toast would have gone.
        first.locator("#text-input textarea").fill("   ")
        first.get_by_role("button", name="生成 Generate").click()
        first.locator("#result").get_by_text("Failed").wait_for(timeout=30000)
        first.wait_for_timeout(15500)
        lasting = result_text(first)
        assert "失败 Failed" in lasting and "req" in lasting and "empty" in lasting, lasting
        first.screenshot(path=str(ARTIFACTS / "error_stays.png"), full_page=True)
