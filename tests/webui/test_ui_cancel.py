"""A request outlives its tab, and Cancel stops it: in headless Chromium, against the real app.

Closing the tab mid-synthesis: the job runs to its end, its result is in History and the Backend says
"done (page closed)". Cancel: the page says so, the Backend shows "cancelled (by user)", the log has a
WARNING line for the request and /metrics counts outcome="cancelled".
"""
from __future__ import annotations

import re

import httpx
import pytest

from browser import browser_session, requires_browser
from conftest import ROOT, ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT, start_app, stop_app

pytestmark = [pytest.mark.slow, requires_browser]
ARTIFACTS = ROOT / "tests" / "artifacts"
PIECES = 30
LONG_TEXT = "[pause:0.05]".join(f"这是第{n}句话，我们慢慢地读出来。" for n in range(1, PIECES + 1))


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    running = start_app(tmp_path_factory.mktemp("ui_cancel"), "--engine", "lite")
    yield running
    stop_app(running)


def start_long_request(page) -> str:
    """Generate with the long text; returns the request id once synthesis is under way."""
    page.locator("#prompt-audio input[type=file]").set_input_files(str(ZERO_SHOT_PROMPT))
    page.locator("#prompt-text textarea").fill(ZERO_SHOT_TRANSCRIPT)
    page.locator("#text-input textarea").fill(LONG_TEXT)
    page.wait_for_timeout(1500)
    page.get_by_role("button", name="生成 Generate").click()
    page.locator("#result").get_by_text(f"/{PIECES}").first.wait_for(timeout=60000)
    return re.search(r"req `?(\w+)", page.locator("#result").inner_text()).group(1)


def backend_row(page, request_id: str, state: str, timeout_ms: int = 120000) -> str:
    """The Backend jobs table's line for `request_id`, once it shows `state`."""
    script = ("([id, state]) => { const t = document.querySelector('#jobs-table').innerText;"
              " const at = t.indexOf(id); return at >= 0 && t.slice(at, at + 60).includes(state); }")
    try:
        page.wait_for_function(script, arg=[request_id, state], timeout=timeout_ms)
    except Exception:
        page.screenshot(path=str(ARTIFACTS / f"backend_missing_{request_id}.png"), full_page=True)
        raise AssertionError(f"{state!r} never shown for {request_id}: "
                             f"{page.locator('#jobs-table').inner_text()[:1500]}") from None
    table = page.locator("#jobs-table").inner_text()
    return table[table.index(request_id):][:60]      # its cells: id, mode, state, ...


def test_closed_tab_finishes_and_lands_in_history(app):
    ARTIFACTS.mkdir(exist_ok=True)
    with browser_session() as open_page:
        leaving, watching = open_page(app.url), open_page(app.url)
        request_id = start_long_request(leaving)
        leaving.close()
        watching.get_by_role("tab", name="后台 Backend").click()
        row = backend_row(watching, request_id, "page closed")
        assert "done (page closed)" in row, row
        watching.screenshot(path=str(ARTIFACTS / "backend_done_page_closed.png"), full_page=True)
        watching.get_by_role("tab", name="历史 History").click()
        watching.wait_for_function("id => document.querySelector('#history-table').innerText.includes(id + '.wav')",
                                   arg=request_id, timeout=15000)
        watching.screenshot(path=str(ARTIFACTS / "history_after_page_closed.png"), full_page=True)
    log = (app.log_dir / "runtime.log").read_text(encoding="utf-8")
    assert re.search(rf"req={request_id} \| finished after its page was closed", log)
    assert list(app.outputs_dir.glob(f"*_{request_id}.wav"))


def test_cancel_stops_the_request_and_says_so_everywhere(app):
    with browser_session() as open_page:
        page, backend = open_page(app.url), open_page(app.url)
        request_id = start_long_request(page)
        page.get_by_role("button", name="取消 Cancel").click()
        page.locator("#result").get_by_text("Cancelled").wait_for(timeout=30000)
        shown = page.locator("#result").inner_text()
        assert request_id in shown and "nothing was saved" in shown, shown
        page.screenshot(path=str(ARTIFACTS / "cancelled.png"), full_page=True)
        backend.get_by_role("tab", name="后台 Backend").click()
        assert "cancelled (by user)" in backend_row(backend, request_id, "cancelled", 30000)
    log = (app.log_dir / "runtime.log").read_text(encoding="utf-8")
    assert re.search(rf"WARNING +\| req={request_id} \| cancelled \(by user\)", log), log[-2000:]
    assert not list(app.outputs_dir.glob(f"*_{request_id}.wav"))
    metrics = httpx.get(f"{app.url}/metrics").text
    assert re.search(r'cosyvoice_requests_total\{mode="zero_shot",outcome="cancelled"\} 1\.0', metrics)
