"""monitor.sh keeps the app alive: a killed app and a hung app are both back within 30 s."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from conftest import ROOT, free_port, wait_for_health

pytestmark = pytest.mark.slow


def app_pid(port: int) -> int:
    return int((ROOT / ".run" / f"app-{port}.pid").read_text().strip())


def monitor_log(port: int) -> list[str]:
    path = ROOT / "logs" / "monitor.log"
    return [line for line in path.read_text().splitlines() if f"| port {port} |" in line] if path.exists() else []


def wait_for_new_healthy_pid(port: int, old_pid: int, timeout: float) -> float:
    started = time.time()
    while time.time() - started < timeout:
        try:
            pid = app_pid(port)
            if pid != old_pid and httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return time.time() - started
        except (OSError, ValueError, httpx.HTTPError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"no healthy new app within {timeout} s; monitor log: {monitor_log(port)[-8:]}")


def test_monitor_restarts_a_killed_and_a_hung_app(tmp_path):
    port = free_port()
    args = ["--port", str(port), "--engine", "lite", "--host", "127.0.0.1",
            "--log-dir", str(tmp_path / "logs"), "--outputs-dir", str(tmp_path / "outputs")]
    monitor = subprocess.Popen([str(ROOT / "monitor.sh"), *args], cwd=ROOT)
    try:
        wait_for_health(port, 180)
        second = subprocess.run([str(ROOT / "monitor.sh"), *args], cwd=ROOT, capture_output=True, text=True,
                                timeout=30)
        assert second.returncode != 0 and "another monitor" in second.stderr

        first = app_pid(port)
        os.kill(first, signal.SIGKILL)
        assert wait_for_new_healthy_pid(port, first, 30) <= 30

        hung = app_pid(port)
        stopped_at = time.time()
        os.kill(hung, signal.SIGSTOP)
        wait_for_new_healthy_pid(port, hung, 60)
        lines = monitor_log(port)
        restarts = [line for line in lines if "restarting" in line]
        assert any("exited" in line for line in restarts), lines
        assert any("not answering" in line for line in restarts), lines
        # The hang is detected and the app restarted within 30 s (the log line carries the time).
        hang_restart = next(line for line in restarts if "not answering" in line)
        restarted_at = time.mktime(time.strptime(hang_restart.split(" | ")[0], "%Y-%m-%d %H:%M:%S"))
        assert restarted_at - stopped_at <= 30, hang_restart
    finally:
        monitor.send_signal(signal.SIGTERM)
        monitor.wait(timeout=30)
    assert any("monitor stopped" in line for line in monitor_log(port))
    time.sleep(1)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
