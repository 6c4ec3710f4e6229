"""The 后台 Backend tab lists batch jobs beside requests: id, name, state, progress, lines done/failed, ETA.

The rows are read from a real job store (SQLite) as lines are claimed, voiced and failed; then the
real app's Backend tab, in Chromium, shows a finished job (deploy set: the browser is a deploy package).
"""
from __future__ import annotations

import re
import time
from types import SimpleNamespace

import httpx

from cosyvoice.ui import backend
from cosyvoice.jobs import model
from cosyvoice.jobs.store import JobStore
from browser import browser_page, requires_browser
from conftest import ROOT
from integration.test_batch_app import jobs_app  # noqa: F401  (the app with a saved narrator voice)

DONE = dict(audio_path="x.wav", sample_rate=24000, duration_s=1.0, used_seed=1, fit_speed=1.0, misfit_s=None)


def specs(count: int) -> list[model.LineSpec]:
    return model.check_lines([model.line_from_object(f"Line {n}.", n, {"voice": "narrator"}, 300)
                              for n in range(1, count + 1)])


def test_job_rows_follow_the_store_as_lines_are_voiced_and_failed(tmp_path):
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    runtime = SimpleNamespace(store=store)
    older = store.create(specs(2), "json", name="older")
    time.sleep(0.01)
    book = store.create(specs(4), "txt", name="chapter one")
    assert backend.batch_job_rows(runtime) == [[book, "chapter one", "queued", "0/4 (0 %)", 0, 0, ""],
                                               [older, "older", "queued", "0/2 (0 %)", 0, 0, ""]]
    # the store hands out the older job's lines first; voice one, fail the other for good
    first = store.claim("node-a", lease_s=30)
    assert store.complete(first, "node-a", **DONE)[0]
    store.fail(store.claim("node-a", lease_s=30), "unknown voice", retry_in=None)
    third = store.claim("node-a", lease_s=30)
    assert third.job_id == book
    assert store.complete(third, "node-a", **DONE)[0]
    rows = {row[0]: row for row in backend.batch_job_rows(runtime)}
    assert rows[older][2:6] == ["done_with_failures", "2/2 (100 %)", 1, 1]
    assert rows[older][6] == ""                                    # a finished job has no ETA
    assert rows[book][2:6] == ["running", "1/4 (25 %)", 1, 0]
    assert isinstance(rows[book][6], float) and rows[book][6] >= 0  # 3 lines left at the measured rate
    assert backend.batch_job_rows(None) == []                      # jobs off: an empty table, not an error


def test_an_unreachable_job_database_is_one_row_not_an_error():
    broken = SimpleNamespace(store=SimpleNamespace(list_jobs=_raise_db_error, progress=lambda ids: {}))
    [row] = backend.batch_job_rows(broken)
    assert row[2] == "error" and "unreachable" in row[1] and "connection refused" in row[1]


def _raise_db_error(limit: int):
    from sqlalchemy.exc import OperationalError

    raise OperationalError("SELECT", {}, Exception("connection refused"))


@requires_browser
def test_backend_tab_shows_a_finished_job_beside_requests(jobs_app):  # noqa: F811
    answer = httpx.post(f"{jobs_app.url}/v1/jobs", json={"name": "backend-view", "voice": "narrator",
                                                         "lines": ["One.", "Two."]}, timeout=30)
    assert answer.status_code == 201, answer.text
    job_id = answer.json()["id"]
    deadline = time.time() + 120
    while httpx.get(f"{jobs_app.url}/v1/jobs/{job_id}?lines=false").json()["state"] != "done":
        assert time.time() < deadline, "the job did not finish"
        time.sleep(0.3)
    with browser_page(jobs_app.url) as page:
        page.get_by_role("tab", name="后台 Backend").click()
        table = page.locator("#batch-jobs-table")
        page.wait_for_function(f"() => (document.querySelector('#batch-jobs-table') || {{}}).innerText"
                               f"?.includes('{job_id}')", timeout=30000)
        shown = " ".join(table.inner_text().split())      # the only job of this app: its row is the table
        page.screenshot(path=str(ROOT / "tests" / "artifacts" / "backend_batch_jobs.png"), full_page=True)
    assert job_id in shown and "backend-view" in shown and " done " in shown, shown
    assert re.search(r"2/2 \(100 %\) 2 0", shown), shown          # progress, lines done, failed
