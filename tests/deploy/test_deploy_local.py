"""deploy/local/up.sh (and ./run.sh --instances N): N instances on consecutive ports, each under its own
monitor with its own log dir, pinned to GPU i when nvidia-smi lists GPUs; it returns when all are ready, and
fails with each instance's reason when they crash-loop; down.sh stops them all."""
from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from conftest import ROOT, free_port

pytestmark = pytest.mark.slow


def two_free_ports() -> int:
    for _ in range(50):
        base = free_port()
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", base + 1))
                return base
            except OSError:
                continue
    raise RuntimeError("no two consecutive free ports")


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_up_starts_pinned_instances_under_monitors_and_down_stops_them(tmp_path):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: Fake (UUID: GPU-0)'\necho 'GPU 1: Fake (UUID: GPU-1)'\n")
    (fake_bin / "nvidia-smi").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}", "LOG_ROOT": str(tmp_path / "logs"),
           "MONITOR_INTERVAL": "1"}
    base = two_free_ports()
    up = subprocess.run([str(ROOT / "run.sh"), "--instances", "2", "--base-port", str(base), "--engine", "lite",
                         "--outputs-dir", str(tmp_path / "outputs")], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)
    try:
        assert up.returncode == 0, up.stderr
        for i in range(2):      # up returned only once every instance was ready
            assert httpx.get(f"http://127.0.0.1:{base + i}/ready", timeout=5).status_code == 200
            assert f"instance-{i}: ready on port {base + i}" in up.stdout
            version = httpx.get(f"http://127.0.0.1:{base + i}/version", timeout=5)
            assert version.json()["instance"] == f"instance-{i}" == version.headers["x-instance"]
            assert version.json()["port"] == base + i
            app_pid = int((ROOT / ".run" / f"app-{base + i}.pid").read_text())
            assert environ_of(app_pid)["CUDA_VISIBLE_DEVICES"] == str(i)
            assert (tmp_path / "logs" / f"instance-{i}" / "runtime.log").exists()
        again = subprocess.run([str(ROOT / "deploy" / "local" / "up.sh"), "1", "--base-port", str(base)], cwd=ROOT,
                               env=env, capture_output=True, text=True, timeout=30)
        assert again.returncode != 0 and "already running" in again.stderr
    finally:
        down = subprocess.run([str(ROOT / "deploy" / "local" / "down.sh")], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=60)
    assert down.returncode == 0 and "stopping monitor" in down.stdout, down.stdout + down.stderr
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{base}/health", timeout=1)
            time.sleep(0.3)
        except httpx.HTTPError:
            break
    for i in range(2):
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{base + i}/health", timeout=1)


def test_instances_that_crash_loop_fail_the_start_with_each_ones_reason(tmp_path):
    """A broken model dir: the apps exit at start-up. run.sh --instances must not print success: it exits
    non-zero within its wait, quoting each instance's own error, and leaves nothing running."""
    broken = tmp_path / "model"
    broken.mkdir()
    (broken / "cosyvoice3.yaml").write_text("{}\n")
    env = {**os.environ, "LOG_ROOT": str(tmp_path / "logs"), "MONITOR_INTERVAL": "1", "UP_WAIT": "400"}
    base = two_free_ports()
    started = time.monotonic()
    up = subprocess.run([str(ROOT / "run.sh"), "--instances", "2", "--base-port", str(base), "--engine", "cosyvoice3",
                         "--model-dir", str(broken), "--outputs-dir", str(tmp_path / "outputs")], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=500)
    assert up.returncode == 1, up.stdout + up.stderr
    assert time.monotonic() - started < 400, "it waited for the full UP_WAIT instead of seeing the crash loop"
    assert "2 of 2 instance(s) failed to start" in up.stderr
    for i in range(2):
        [line] = [line for line in up.stderr.splitlines() if line.strip().startswith(f"instance-{i} (port {base + i})")]
        assert "crash loop" in line and f"model dir {broken} is incomplete" in line, up.stderr
    assert "ready on port" not in up.stdout
    for i in range(2):
        assert not (ROOT / ".run" / "instances" / f"monitor-{base + i}.pid").exists()
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{base + i}/health", timeout=1)
