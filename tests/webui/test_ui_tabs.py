"""Four Synthesize tabs and a Backend tab in ONE browser (one connection budget per host): every request
is answered with its queue place or progress at once, the Backend tab stays live and lists them all.

One worker, streaming on in every tab: the long-lived streams of the first tabs must not starve the
later ones (Chromium allows 6 connections per host over HTTP/1.1).
"""
from __future__ import annotations

import re
import time

import pytest

from browser import browser_session, requires_browser
from conftest import ROOT, ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT, start_app, stop_app

pytestmark = [pytest.mark.slow, requires_browser]
ARTIFACTS = ROOT / "tests" / "artifacts"
TABS = 4
# Seconds a click may take to show its queue place or progress (the bound; a starved tab once
# showed a silent spinner for 20 s).
ANSWER_S = 2.0
LONG_TEXT = "[pause:0.05]".join(f"这是第{n}句话，我们慢慢地读出来。" for n in range(1, 13))


@pytest.fixture(scope="module")
def one_worker_app(tmp_path_factory):
    app = start_app(tmp_path_factory.mktemp("ui_tabs"), "--engine", "lite", "--concurrency", "1",
                    "--queue-size", "8")
    yield app
    stop_app(app)


def fill_form(page, text: str) -> None:
    page.locator("#prompt-audio input[type=file]").set_input_files(str(ZERO_SHOT_PROMPT))
    page.locator("#prompt-text textarea").fill(ZERO_SHOT_TRANSCRIPT)
    page.locator("#text-input textarea").fill(text)
    page.get_by_label("流式播放 Stream while synthesising").check()
    page.wait_for_timeout(1500)


def test_four_tabs_and_backend_in_one_browser_all_get_answers(one_worker_app):
    ARTIFACTS.mkdir(exist_ok=True)
    with browser_session(height=1400) as open_page:
        pages = [open_page(one_worker_app.url) for _ in range(TABS)]
        backend = open_page(one_worker_app.url)
        backend.get_by_role("tab", name="后台 Backend").click()
        for page in pages:
            fill_form(page, LONG_TEXT)
        answered_after, request_ids = [], []
        for number, page in enumerate(pages, 1):
            clicked = time.time()
            page.get_by_role("button", name="生成 Generate").click()
            page.wait_for_function("() => /Queued: position|piece \\d+\\//.test("
                                   "document.querySelector('#result').innerText)", timeout=ANSWER_S * 1000)
            answered_after.append(round(time.time() - clicked, 2))
            request_ids.append(re.search(r"req `?(\w+)", page.locator("#result").inner_text()).group(1))
            if number > 1:
                assert "Queued: position" in page.locator("#result").inner_text()
        print(f"click → queue place or progress shown, per tab: {answered_after} s")
        pages[-1].screenshot(path=str(ARTIFACTS / "tab4_queued.png"), full_page=True)
        backend.wait_for_function(
            "ids => { const t = document.querySelector('#jobs-table').innerText;"
            " return ids.every(id => t.includes(id)); }", arg=request_ids, timeout=ANSWER_S * 1000)
        table = backend.locator("#jobs-table").inner_text()
        assert "running" in table and table.count("queued") >= TABS - 1, table
        backend.screenshot(path=str(ARTIFACTS / "backend_four_tabs.png"), full_page=True)
        for page in pages:
            page.locator("#result").get_by_text("Saved").wait_for(timeout=300000)
