"""Jobs shared by two app instances through a real PostgreSQL server (Debian's postgresql, started here).

One instance is killed with SIGKILL mid-job; the other takes its lines over once their leases run
out and finishes the job: every line recorded once, none lost.
"""
from __future__ import annotations

import glob
import io
import json
import os
import shutil
import subprocess
import tempfile
import time
import zipfile
from pathlib import Path

import httpx
import pytest
import soundfile as sf

from conftest import free_port, start_app, stop_app
from integration.test_batch_app import FINAL, app_flags, save_narrator, wait_job


# A real PostgreSQL comes with the deploy packages (.ci/install-deploy-deps.sh), like nginx and Chromium.
pytestmark = pytest.mark.deploy


def postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        pytest.fail("PostgreSQL is not installed: apt-get install postgresql (CI: .ci/install-postgres.sh)")
    return Path(initdb).resolve().parent


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway cluster in a temp dir on a loopback port; as root it runs as the postgres (or nobody) user."""
    bindir = postgres_bin()
    home = Path(tempfile.mkdtemp(prefix="cv-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        user = "postgres" if shutil.which("id") and subprocess.run(["id", "postgres"], capture_output=True).returncode == 0 \
            else "nobody"
        shutil.chown(home, user)
        as_user = ["runuser", "-u", user, "--"]
    data, port = home / "data", free_port()
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "cosyvoice",
                    "--no-sync"], check=True, capture_output=True)
    log = open(home / "server.log", "wb")
    server = subprocess.Popen([*as_user, str(bindir / "postgres"), "-D", str(data), "-h", "127.0.0.1",
                               "-p", str(port), "-k", str(home), "-c", "fsync=off"], stdout=log, stderr=log)
    deadline = time.time() + 30
    while subprocess.run([str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                         capture_output=True).returncode != 0:
        if time.time() > deadline or server.poll() is not None:
            server.kill()
            pytest.fail("PostgreSQL did not start:\n" + (home / "server.log").read_text(errors="replace")[-2000:])
        time.sleep(0.2)
    yield f"postgresql+psycopg://cosyvoice@127.0.0.1:{port}/postgres"
    server.terminate()
    server.wait(timeout=30)
    shutil.rmtree(home, ignore_errors=True)


def test_claims_skip_locked_rows_on_postgres(postgres_url):
    from cosyvoice.jobs.model import line_from_object
    from cosyvoice.jobs.store import JobStore

    store = JobStore(postgres_url)
    job_id = store.create([line_from_object(f"Line {n}.", n, {}, 100) for n in range(1, 41)], "json")
    claims = [store.claim(f"node-{n % 4}", lease_s=30) for n in range(40)]
    assert sorted(c.idx for c in claims if c.job_id == job_id) == list(range(40))   # each line handed out once
    assert store.size_bytes() > 0


@pytest.mark.slow
def test_two_instances_one_killed_the_other_finishes_its_lines(postgres_url, tmp_path):
    lease = 5.0
    save_narrator(tmp_path / "voices")
    flags = [*app_flags(tmp_path, lease), "--jobs-db", postgres_url]
    first = start_app(tmp_path / "a", *flags, timeout=400)
    second = start_app(tmp_path / "b", *flags, timeout=400)
    lines = [{"custom_id": f"p{n:03d}", "text": f"Shared line number {n}."} for n in range(120)]
    job = httpx.post(f"{first.url}/v1/jobs", json={"lines": lines, "voice": "narrator", "seed": 3}, timeout=30).json()
    try:
        wait_job(second.url, job["id"], lambda v: v["progress"]["done"] >= 30, 240)
        held = [line for line in httpx.get(f"{second.url}/v1/jobs/{job['id']}").json()["lines"]
                if line["state"] == "running"]
        first.proc.kill()
        first.proc.wait()
        killed_at = time.time()
        view = wait_job(second.url, job["id"], lambda v: v["state"] in FINAL, 400)
        finished_in = time.time() - killed_at
        full = httpx.get(f"{second.url}/v1/jobs/{job['id']}").json()["lines"]
        packed = zipfile.ZipFile(io.BytesIO(httpx.get(f"{second.url}/v1/jobs/{job['id']}/result", timeout=120).content))
    finally:
        stop_app(second)
        if first.proc.poll() is None:
            first.proc.kill()
    assert held and view["state"] == "done" and view["progress"]["done"] == 120
    by_id = {line["custom_id"]: line for line in full}
    for line in held:               # what was being voiced at the kill is recorded within lease + 30 s
        assert by_id[line["custom_id"]]["finished_at"] - killed_at < lease + 30, (line, finished_in)
    assert len({line["voiced_by"] for line in full}) == 2                 # both instances did share the work
    names = sorted(p.name for p in (tmp_path / "jobs" / job["id"] / "lines").iterdir())
    files = [name for name in names if name.endswith(".wav")]           # each beside its .pieces.json
    assert sorted(n.replace(".pieces.json", ".wav") for n in names if n.endswith(".pieces.json")) == files
    assert len(files) == 120 and len({name.split("-")[0] for name in files}) == 120
    manifest = [json.loads(row) for row in packed.read("manifest.jsonl").decode().splitlines()]
    assert [m["custom_id"] for m in manifest] == [f"p{n:03d}" for n in range(120)]
    stitched, rate = sf.read(io.BytesIO(packed.read("stitched.wav")))
    assert abs(len(stitched) / rate - sum(line["duration_s"] for line in full)) < 0.05
    survivor_log = (second.log_dir / "runtime.log").read_text()
    assert any(f"job {job['id']} line '{line['custom_id']}'" in survivor_log for line in held)   # it voiced them
