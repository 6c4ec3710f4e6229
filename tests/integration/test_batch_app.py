"""Jobs through the real app (lite engine, SQLite): the HTTP API, and a SIGKILL mid-job with a restart."""
from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path

import httpx
import pytest
import soundfile as sf

from conftest import ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT, start_app, stop_app
from integration.test_security import warning_for

FINAL = ("done", "done_with_failures", "failed", "cancelled")


def save_narrator(voices_dir: Path) -> None:
    from cosyvoice.engines.lite import LiteEngine
    from cosyvoice.voices.library import VoiceLibrary

    VoiceLibrary(voices_dir).add("narrator", str(ZERO_SHOT_PROMPT), ZERO_SHOT_TRANSCRIPT, engine=LiteEngine())


def app_flags(tmp: Path, lease: float = 4.0) -> list[str]:
    for name in ("a", "b"):
        (tmp / name).mkdir(exist_ok=True)          # each instance's own logs and outputs
    return ["--engine", "lite", "--concurrency", "3", "--voices-dir", str(tmp / "voices"),
            "--jobs-dir", str(tmp / "jobs"), "--job-lease-seconds", str(lease)]


def wait_job(url: str, job_id: str, until, timeout: float) -> dict:
    deadline = time.time() + timeout
    while True:
        view = httpx.get(f"{url}/v1/jobs/{job_id}", params={"lines": "false"}, timeout=10).json()
        if until(view) or time.time() > deadline:
            return view
        time.sleep(0.3)


@pytest.fixture(scope="module")
def jobs_app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("jobs_app")
    save_narrator(tmp / "voices")
    app = start_app(tmp, *app_flags(tmp), timeout=400)
    app.tmp = tmp
    yield app
    stop_app(app)


def batch_file(count: int) -> bytes:
    return "".join(json.dumps({"custom_id": f"clip-{n}", "method": "POST", "url": "/v1/audio/speech",
                               "body": {"model": "tts-1", "input": f"Clip {n}, a short line.", "voice": "narrator",
                                        "seed": n}}) + "\n" for n in range(1, count + 1)).encode()


def test_a_batch_file_job_is_stored_voiced_and_downloaded_as_a_zip(jobs_app):
    url = jobs_app.url
    answer = httpx.post(f"{url}/v1/jobs", files={"file": ("batch.jsonl", batch_file(6), "application/jsonl")},
                        data={"name": "clips"}, timeout=30)
    assert answer.status_code == 201, answer.text
    job = answer.json()
    assert job["source"] == "batch" and job["progress"]["total"] == 6 and job["name"] == "clips"
    view = wait_job(url, job["id"], lambda v: v["state"] in FINAL, 120)
    assert view["state"] == "done" and view["progress"]["done"] == 6 and view["eta_s"] is None
    full = httpx.get(f"{url}/v1/jobs/{job['id']}").json()
    line = full["lines"][2]
    assert line["custom_id"] == "clip-3" and line["seed"] == 3
    clip = httpx.get(f"{url}{line['audio_url']}")
    assert clip.headers["content-type"] == "audio/wav"
    audio, rate = sf.read(io.BytesIO(clip.content))
    assert abs(len(audio) / rate - line["duration_s"]) < 0.001
    packed = zipfile.ZipFile(io.BytesIO(httpx.get(f"{url}/v1/jobs/{job['id']}/result", timeout=60).content))
    names = set(packed.namelist())
    assert {"stitched.wav", "subtitles.srt", "subtitles.vtt", "manifest.jsonl"} <= names
    assert len([n for n in names if n.startswith("lines/")]) == 6
    manifest = [json.loads(row) for row in packed.read("manifest.jsonl").decode().splitlines()]
    assert [m["custom_id"] for m in manifest] == [f"clip-{n}" for n in range(1, 7)]
    stitched, rate = sf.read(io.BytesIO(packed.read("stitched.wav")))
    assert abs(len(stitched) / rate - sum(m["response"]["body"]["duration_s"] for m in manifest)) < 0.01


def test_job_api_refusals_are_clear(jobs_app):
    url = jobs_app.url
    bad = httpx.post(f"{url}/v1/jobs", json={"lines": ["Fine.", {"text": ""}]})
    assert bad.status_code == 400 and "Input line 2" in bad.json()["error"]["message"]
    assert "request" in bad.json()["error"]["message"] and bad.headers["x-request-id"]
    missing = httpx.get(f"{url}/v1/jobs/job_nope", headers={"X-Request-ID": "lost-job-1"})
    assert missing.status_code == 404 and missing.headers["x-request-id"] == "lost-job-1"
    assert missing.json() == {"error": {"message": "No job 'job_nope'. List jobs with GET /v1/jobs. "
                                                   "(request lost-job-1)",
                                        "type": "invalid_request_error", "param": None, "code": "job_not_found"}}
    assert "GET /v1/jobs/job_nope: refused: No job 'job_nope'" in warning_for(jobs_app, "lost-job-1")
    job = httpx.post(f"{url}/v1/jobs", json={"lines": ["One line only."], "voice": "narrator"}).json()
    wait_job(url, job["id"], lambda v: v["state"] in FINAL, 60)
    again = httpx.post(f"{url}/v1/jobs/{job['id']}/resume", headers={"X-Request-ID": "late-resume"})
    assert again.status_code == 409 and "cannot be queued" in again.json()["error"]["message"]
    assert again.json()["error"]["code"] == "invalid_job_state" and again.headers["x-request-id"] == "late-resume"
    assert f"POST /v1/jobs/{job['id']}/resume: refused:" in warning_for(jobs_app, "late-resume")
    no_line = httpx.get(f"{url}/v1/jobs/{job['id']}/lines/nope/audio")
    assert no_line.status_code == 404 and no_line.json()["error"]["code"] == "job_not_found"
    fmt = httpx.get(f"{url}/v1/jobs/{job['id']}/result", params={"format": "mp9"})
    assert fmt.status_code == 400
    assert "job_" in httpx.get(f"{url}/v1/jobs").json()["data"][0]["id"]
    assert "cosyvoice_job_lines_total" in httpx.get(f"{url}/metrics").text


@pytest.mark.slow
def test_sigkill_mid_job_then_restart_finishes_every_line_exactly_once(tmp_path):
    save_narrator(tmp_path / "voices")
    first = start_app(tmp_path / "a", *app_flags(tmp_path), timeout=400)
    lines = [{"custom_id": f"l{n:03d}", "text": f"Sentence {n} of the long book."} for n in range(200)]
    job = httpx.post(f"{first.url}/v1/jobs", json={"lines": lines, "voice": "narrator", "seed": 11}, timeout=30).json()
    try:
        view = wait_job(first.url, job["id"], lambda v: v["progress"]["done"] >= 30, 240)
        assert view["state"] == "running" and view["eta_s"] > 0
    finally:
        first.proc.kill()                                      # SIGKILL: no drain, leases left held
        first.proc.wait()
    second = start_app(tmp_path / "b", *app_flags(tmp_path), timeout=400)
    try:
        view = wait_job(second.url, job["id"], lambda v: v["state"] in FINAL, 400)
        assert view["state"] == "done" and view["progress"]["done"] == 200, view["progress"]
        full = httpx.get(f"{second.url}/v1/jobs/{job['id']}").json()["lines"]
        packed = zipfile.ZipFile(io.BytesIO(httpx.get(f"{second.url}/v1/jobs/{job['id']}/result", timeout=120).content))
    finally:
        stop_app(second)
    names = sorted(p.name for p in (tmp_path / "jobs" / job["id"] / "lines").iterdir())
    files = [name for name in names if name.endswith(".wav")]           # each beside its .pieces.json
    assert sorted(n.replace(".pieces.json", ".wav") for n in names if n.endswith(".pieces.json")) == files
    assert len(files) == 200 and len({name.split("-")[0] for name in files}) == 200   # one take per line, no partials
    assert max(line["attempts"] for line in full) >= 2           # lines the killed instance held were taken over
    manifest = [json.loads(row) for row in packed.read("manifest.jsonl").decode().splitlines()]
    assert [m["custom_id"] for m in manifest] == [f"l{n:03d}" for n in range(200)]
    stitched, rate = sf.read(io.BytesIO(packed.read("stitched.wav")))
    assert abs(len(stitched) / rate - sum(line["duration_s"] for line in full)) < 0.05


def test_the_official_openai_client_runs_a_speech_batch(jobs_app, tmp_path):
    import openai

    client = openai.OpenAI(base_url=f"{jobs_app.url}/v1", api_key="unused", max_retries=0, timeout=60)
    path = tmp_path / "batch.jsonl"
    path.write_bytes(batch_file(4))
    with open(path, "rb") as handle:
        uploaded = client.files.create(file=handle, purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes == path.stat().st_size
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/audio/speech", completion_window="24h",
                                  metadata={"project": "trailer"})
    assert batch.status == "in_progress" and batch.request_counts.total == 4
    deadline = time.time() + 120
    while batch.status == "in_progress" and time.time() < deadline:
        time.sleep(0.5)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.request_counts.completed == 4 and batch.metadata == {"project": "trailer"}
    output = [json.loads(row) for row in client.files.content(batch.output_file_id).text.splitlines()]
    assert [o["custom_id"] for o in output] == ["clip-1", "clip-2", "clip-3", "clip-4"]
    assert all(o["response"]["status_code"] == 200 and o["response"]["body"]["duration_s"] > 0.3 for o in output)
    assert batch.id in [b.id for b in client.batches.list()]
    with pytest.raises(openai.BadRequestError, match="Only endpoint"):
        client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")


def test_files_and_batches_refusals_have_the_v1_shape(jobs_app):
    url = jobs_app.url
    missing = httpx.get(f"{url}/v1/files/file-nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "job_not_found"
    assert httpx.get(f"{url}/v1/batches/job_nope").json()["error"]["code"] == "job_not_found"
    latin = httpx.post(f"{url}/v1/files", files={"file": ("b.jsonl", "caf\xe9\n".encode("latin-1"))},
                       data={"purpose": "batch"}).json()
    refused = httpx.post(f"{url}/v1/batches", json={"input_file_id": latin["id"], "endpoint": "/v1/audio/speech"})
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["param"] == "input_file_id" and "not UTF-8" in refused.json()["error"]["message"]


def test_cli_submits_a_csv_waits_and_downloads(jobs_app, tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    script = tmp_path / "script.csv"
    script.write_text("custom_id,text\nhello,Hello and welcome.\nbye,Thank you for listening.\n", encoding="utf-8")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cosyvoice", "jobs", *args, "--url", jobs_app.url],
                              cwd=ROOT, capture_output=True, text=True, timeout=180)

    submitted = cli("submit", str(script), "--voice", "narrator", "--wait")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert job_id.startswith("job_") and "2/2 done" in submitted.stderr
    target = tmp_path / "out.srt"
    downloaded = cli("download", job_id, "--format", "srt", "--out", str(target))
    assert downloaded.returncode == 0 and downloaded.stdout.strip() == str(target)
    assert "Thank you for listening." in target.read_text(encoding="utf-8")
    assert job_id in cli("list").stdout
    missing = cli("show", "job_missing")
    assert missing.returncode == 1 and "No job 'job_missing'" in missing.stderr
