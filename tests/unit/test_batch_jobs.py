"""Durable jobs in one process on SQLite with the lite engine: leases, results, subtitles, controls."""
from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from cosyvoice.jobs import model, result
from cosyvoice.jobs.store import JobStateError, JobStore
from cosyvoice.jobs.worker import JobWorker, WorkerConfig
from cosyvoice.errors import UserInputError
from conftest import ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT

FINAL = ("done", "done_with_failures", "failed", "cancelled")


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    from cosyvoice.engines.lite import LiteEngine
    from cosyvoice.service.synthesis import ServiceConfig, SynthesisService

    tmp = tmp_path_factory.mktemp("batch_service")
    svc = SynthesisService(LiteEngine(), ServiceConfig(outputs_dir=tmp / "outputs", voices_dir=tmp / "voices"))
    svc.library.add("narrator", str(ZERO_SHOT_PROMPT), ZERO_SHOT_TRANSCRIPT, engine=svc.engine)
    return svc


@pytest.fixture
def setup(service, tmp_path):
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    workers: list[JobWorker] = []

    def worker(count: int = 1, lease_s: float = 10.0) -> JobWorker:
        w = JobWorker(store, service, WorkerConfig(jobs_dir=tmp_path / "jobs", workers=count, lease_s=lease_s,
                                                   poll_s=0.1, retry_base_s=0.2))
        workers.append(w)
        return w

    yield store, worker, tmp_path / "jobs"
    for w in workers:
        w.stop()


def lines(count: int, **defaults) -> list[model.LineSpec]:
    defaults = {"voice": "narrator", "seed": 5, **defaults}
    return model.check_lines([model.line_from_object(f"Line {n} of the chapter, read aloud.", n, defaults, 300)
                              for n in range(1, count + 1)])


def wait_final(store: JobStore, job_id: str, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = store.job(job_id)
        if job["state"] in FINAL:
            return job
        time.sleep(0.1)
    raise TimeoutError(f"job still {store.job(job_id)['state']}: {store.counts(job_id)}")


def test_an_expired_lease_is_taken_over_and_the_late_result_is_refused(tmp_path):
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    job_id = store.create(lines(2), "json")
    first = store.claim("dead-node", lease_s=0.2)
    assert (first.job_id, first.idx) == (job_id, 0)
    second = store.claim("live-node", lease_s=30)
    assert second.idx == 1                          # the leased line is not handed out twice
    assert store.claim("live-node", lease_s=30) is None
    time.sleep(0.3)
    taken_over = store.claim("live-node", lease_s=30)
    assert (taken_over.idx, taken_over.attempts) == (0, 2)
    done = dict(audio_path="x.wav", sample_rate=24000, duration_s=1.0, used_seed=1, fit_speed=1.0, misfit_s=None)
    assert store.complete(first, "dead-node", **done)[0] is False       # the dead node's late take is refused
    assert store.complete(taken_over, "live-node", **done)[0] is True
    assert store.complete(taken_over, "live-node", **done)[0] is False  # recorded once, never twice
    assert store.complete(second, "live-node", **done)[0] is True
    assert store.counts(job_id) == {"done": 2} and store.job(job_id)["state"] == "done"
    assert [row["voiced_by"] for row in store.lines(job_id)] == ["live-node", "live-node"]


def test_inputs_become_lines_and_mistakes_name_their_line():
    book = "First paragraph. It has two sentences.\n\n" + "Second one is long. " * 30 + "\n\n  \n\nThird."
    split = model.parse_input(book, "txt", {"voice": "v"}, max_chars=120)
    assert split[0].text == "First paragraph. It has two sentences." and split[-1].text == "Third."
    assert len(split) > 3 and all(len(s.text) <= 120 for s in split) and all(s.voice == "v" for s in split)
    rows = model.parse_input("custom_id,text,seed\nintro,Hello there.,3\nend,Goodbye.,\n", "csv", {}, 300)
    assert [(r.custom_id, r.text, r.seed) for r in rows] == [("intro", "Hello there.", 3), ("end", "Goodbye.", None)]
    cues = model.parse_input("1\n00:00:01,000 --> 00:00:02,500\nHello\nworld\n\n2\n00:00:03,000 --> 00:00:04,000\nBye\n",
                             "srt", {}, 300)
    assert [(c.text, c.slot_start, c.slot_end) for c in cues] == [("Hello world", 1.0, 2.5), ("Bye", 3.0, 4.0)]
    batch = ('{"custom_id": "a", "method": "POST", "url": "/v1/audio/speech", "body": {"input": "Hi.", '
             '"voice": "narrator", "speed": 1.2}}\n')
    assert model.guess_format("x.jsonl", batch) == "batch"
    (line,) = model.parse_input(batch, "batch", {}, 300)
    assert (line.custom_id, line.text, line.voice, line.speed) == ("a", "Hi.", "narrator", 1.2)
    with pytest.raises(UserInputError, match="Input line 1: only POST /v1/audio/speech"):
        model.parse_input(batch.replace("/v1/audio/speech", "/v1/chat/completions"), "batch", {}, 300)
    with pytest.raises(UserInputError, match="'a' appears twice"):
        model.parse_input(batch + batch, "batch", {}, 300)
    with pytest.raises(UserInputError, match="Input line 2: not valid JSON"):
        model.parse_input(batch + "{oops\n", "batch", {}, 300)
    with pytest.raises(UserInputError, match="speed 3 is out of range"):
        model.parse_input("Hello.", "txt", {"speed": 3}, 300)


def test_a_job_is_voiced_in_order_and_its_track_and_subtitles_match_the_lines(setup):
    import srt
    import webvtt

    store, worker, jobs_dir = setup
    job_id = store.create(lines(8), "json", options={"gap_ms": 0})
    worker(2).start()
    job = wait_final(store, job_id)
    assert job["state"] == "done"
    rows = store.lines(job_id)
    names = sorted(p.name for p in (jobs_dir / job_id / "lines").iterdir())
    files = [name for name in names if name.endswith(".wav")]
    assert sorted(n.replace(".pieces.json", ".wav") for n in names if n.endswith(".pieces.json")) == files
    assert len(files) == 8 and all(not name.startswith(".") for name in names)
    samples, rate, cues = result.stitch(job, rows, jobs_dir)
    line_audio = [sf.read(jobs_dir / row["audio_path"], dtype="float32")[0] for row in rows]
    assert len(samples) == sum(len(a) for a in line_audio)            # the track is the lines, nothing between
    assert np.array_equal(samples[: len(line_audio[0])], line_audio[0])
    peak = float(np.abs(samples).max())
    assert 0.05 < peak < 1.0 and np.mean(np.abs(samples) > 0.999) < 1e-4    # audible, not clipped
    parsed = list(srt.parse(result.srt_text(cues)))
    assert [c.content for c in parsed] == [row["text"] for row in rows]
    for cue, row, start in zip(parsed, rows, np.cumsum([0] + [r["duration_s"] for r in rows])):
        assert abs(cue.start.total_seconds() - start) < 0.002
        assert abs((cue.end - cue.start).total_seconds() - row["duration_s"]) < 0.002
    vtt_path = jobs_dir / "subs.vtt"
    vtt_path.write_text(result.vtt_text(cues), encoding="utf-8")
    captions = webvtt.read(str(vtt_path))
    hours, minutes, seconds = captions[-1].end.split(":")
    assert len(captions) == 8 and [c.text for c in captions] == [row["text"] for row in rows]
    assert int(hours) * 3600 + int(minutes) * 60 + float(seconds) == pytest.approx(len(samples) / rate, abs=0.002)


def test_job_lines_go_to_their_job_folder_even_when_outputs_is_unusable(tmp_path):
    """A line's audio belongs to its job: it is never written to outputs/ (nor History), so an outputs/
    that cannot be written (full, or here not even a folder) does not stop a job on its own volume."""
    from cosyvoice.engines.lite import LiteEngine
    from cosyvoice.service.synthesis import ServiceConfig, SynthesisService

    (tmp_path / "not-a-folder").write_text("a file where outputs/ should be")
    svc = SynthesisService(LiteEngine(), ServiceConfig(outputs_dir=tmp_path / "not-a-folder" / "outputs",
                                                       voices_dir=tmp_path / "voices"))
    svc.library.add("narrator", str(ZERO_SHOT_PROMPT), ZERO_SHOT_TRANSCRIPT, engine=svc.engine)
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    worker = JobWorker(store, svc, WorkerConfig(jobs_dir=tmp_path / "jobs", workers=1, poll_s=0.1))
    worker.start()
    try:
        job_id = store.create(lines(3), "json")
        job = wait_final(store, job_id)
    finally:
        worker.stop()
    assert job["state"] == "done", [row.get("error") for row in store.lines(job_id)]
    assert len(list((tmp_path / "jobs" / job_id / "lines").glob("*.wav"))) == 3


def test_regenerating_a_line_changes_only_that_line(setup):
    store, worker, jobs_dir = setup
    job_id = store.create(lines(4), "json")
    worker(1).start()
    wait_final(store, job_id)
    before = {row["custom_id"]: (jobs_dir / row["audio_path"]).read_bytes() for row in store.lines(job_id)}
    store.regenerate(job_id, "3", text="Line three, now with new words.", seed=None)
    assert store.job(job_id)["state"] in ("queued", "running")      # back in line (a worker may have it already)
    job = wait_final(store, job_id)
    rows = {row["custom_id"]: row for row in store.lines(job_id)}
    after = {cid: (jobs_dir / row["audio_path"]).read_bytes() for cid, row in rows.items()}
    assert job["state"] == "done" and rows["3"]["revision"] == 1 and rows["3"]["text"].startswith("Line three")
    assert after["3"] != before["3"]
    assert {cid: data for cid, data in after.items() if cid != "3"} == {
        cid: data for cid, data in before.items() if cid != "3"}
    assert len(list((jobs_dir / job_id / "lines").iterdir())) == 2 * 4  # the old take (and its pieces) is gone
    with pytest.raises(UserInputError, match="no line 'nine'"):
        store.regenerate(job_id, "nine", None, None)


def test_pause_holds_lines_resume_continues_cancel_stops_the_rest(setup):
    store, worker, _ = setup
    job_id = store.create(lines(30), "json")
    store.set_state(job_id, "pause")
    worker(1).start()
    time.sleep(1.0)
    assert store.counts(job_id) == {"pending": 30}                  # paused before any line: none voiced
    with pytest.raises(JobStateError, match="is paused; it cannot be paused"):
        store.set_state(job_id, "pause")
    store.set_state(job_id, "resume")
    deadline = time.time() + 60
    while store.counts(job_id).get("done", 0) < 2 and time.time() < deadline:
        time.sleep(0.05)
    store.set_state(job_id, "cancel")
    deadline = time.time() + 60
    while store.counts(job_id).get("running") and time.time() < deadline:
        time.sleep(0.1)                                             # a line being voiced finishes, none starts
    counts = store.counts(job_id)
    assert store.job(job_id)["state"] == "cancelled"
    assert counts.get("cancelled", 0) >= 20 and counts.get("pending", 0) == 0 and counts.get("running", 0) == 0
    assert counts["done"] + counts["cancelled"] == 30
    with pytest.raises(JobStateError, match="cancelled"):
        store.set_state(job_id, "resume")


def test_a_bad_line_fails_with_the_service_message_and_the_rest_are_voiced(setup):
    store, worker, _ = setup
    specs = lines(3)
    specs[1].voice = "nobody-saved-this"
    job_id = store.create(specs, "json")
    worker(1).start()
    job = wait_final(store, job_id)
    rows = store.lines(job_id)
    assert job["state"] == "done_with_failures"
    assert [r["state"] for r in rows] == ["done", "failed", "done"]
    assert "nobody-saved-this" in rows[1]["error"] and rows[1]["attempts"] == 1     # refused: not retried


def _srt(cues: list[tuple[float, float, str]]) -> str:
    import srt

    return srt.compose([srt.Subtitle(n, timedelta(seconds=a), timedelta(seconds=b), text)
                        for n, (a, b, text) in enumerate(cues, 1)])


def test_srt_lines_sit_in_their_slots_and_misfits_are_reported(setup):
    import srt

    store, worker, jobs_dir = setup
    cues, t = [], 0.5
    for n in range(50):
        if n % 10 == 7:                    # a slot far too short for its text: cannot fit even at speed 2
            cues.append((t, t + 0.4, f"Cue {n} says a great deal more than its tiny slot could ever hold."))
            t += 0.9
        else:
            cues.append((t, t + 2.2, f"Cue number {n}."))
            t += 2.6
    specs = model.parse_input(_srt(cues), "srt", {"voice": "narrator", "seed": 9}, 300)
    job_id = store.create(specs, "srt")
    worker(2).start()
    job = wait_final(store, job_id, timeout=300)
    rows = store.lines(job_id)
    assert job["state"] == "done"
    samples, rate, out_cues = result.stitch(job, rows, jobs_dir)
    parsed = list(srt.parse(result.srt_text(out_cues)))
    misfits = [r for r in rows if r["misfit_s"] > 0.02]
    assert {r["idx"] % 10 for r in misfits} == {7} and all(r["fit_speed"] == 2.0 for r in misfits)
    previous_end, on_slot = 0.0, 0
    for row, cue in zip(rows, parsed):
        start, end = cue.start.total_seconds(), cue.end.total_seconds()
        assert abs(end - start - row["duration_s"]) < 0.002          # the cue spans the line's real audio
        if previous_end <= row["slot_start"]:
            assert abs(start - row["slot_start"]) <= 0.05             # on its slot ...
            on_slot += 1
            if row["misfit_s"] <= 0.02:
                assert end <= row["slot_end"] + 0.05                  # ... and inside it
        else:                                                         # pushed back by an overrun, never overlapping
            assert abs(start - previous_end) < 0.002
        previous_end = end
        segment = samples[int(start * rate): int(end * rate)]
        assert np.abs(segment).max() > 0.05                           # the cue covers sound, not silence
    assert on_slot >= 40
    assert abs(len(samples) / rate - parsed[-1].end.total_seconds()) < 0.002


def test_a_job_paused_while_its_last_line_finished_ends_when_resumed(tmp_path):
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    job_id = store.create(lines(1), "json")
    claim = store.claim("node", lease_s=30)
    store.set_state(job_id, "pause")
    store.complete(claim, "node", audio_path="x.wav", sample_rate=24000, duration_s=1.0, used_seed=1,
                   fit_speed=1.0, misfit_s=None)
    assert store.job(job_id)["state"] == "paused"
    assert store.set_state(job_id, "resume")["state"] == "done"


def test_a_line_whose_workers_keep_dying_fails_instead_of_looping(setup):
    store, worker, _ = setup
    job_id = store.create(lines(1), "json")
    for _ in range(3):                     # three workers claimed it and died (their leases ran out)
        assert store.claim("doomed", lease_s=0.01) is not None
        time.sleep(0.02)
    worker(1).start()
    job = wait_final(store, job_id, timeout=30)
    (row,) = store.lines(job_id)
    assert job["state"] == "failed" and row["attempts"] == 4 and "3 workers stopped" in row["error"]


def test_the_jobs_api_mounted_alone_still_answers_in_the_v1_error_shape(service, tmp_path):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from cosyvoice.jobs.router import mount_jobs
    from cosyvoice.settings import JobsConfig

    app = FastAPI()                      # no openai_api.mount: mount_jobs brings the error handler itself
    runtime = mount_jobs(app, service, JobsConfig(jobs_dir=tmp_path / "jobs", job_workers=0))   # voices nothing
    try:
        client = TestClient(app)
        missing = client.get("/v1/jobs/job_nope", headers={"X-Request-ID": "alone-1"})
        job = client.post("/v1/jobs", json={"lines": ["Still waiting."], "voice": "narrator"})
        early = client.get(f"/v1/jobs/{job.json()['id']}/result")
    finally:
        runtime.worker.stop()
    assert missing.status_code == 404 and missing.headers["x-request-id"] == "alone-1"
    error = missing.json()["error"]
    assert error["code"] == "job_not_found" and error["type"] == "invalid_request_error"
    assert "(request alone-1)" in error["message"]
    assert job.status_code == 201 and early.status_code == 409
    assert early.json()["error"]["code"] == "invalid_job_state" and "still to voice" in early.json()["error"]["message"]
