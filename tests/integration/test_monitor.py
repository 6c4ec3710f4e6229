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


def monitor_log(port: int, log_dir: Path) -> list[str]:
    path = log_dir / "monitor.log"
    return [line for line in path.read_text().splitlines() if f"| port {port} |" in line] if path.exists() else []


def wait_for_new_healthy_pid(port: int, old_pid: int, timeout: float, log_dir: Path) -> float:
    started = time.time()
    while time.time() - started < timeout:
        try:
            pid = app_pid(port)
            if pid != old_pid and httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return time.time() - started
        except (OSError, ValueError, httpx.HTTPError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"no healthy new app within {timeout} s; monitor log: {monitor_log(port, log_dir)[-8:]}")


def test_monitor_restarts_a_killed_and_a_hung_app(tmp_path):
    port = free_port()
    log_dir = tmp_path / "logs"
    args = ["--port", str(port), "--engine", "lite", "--host", "127.0.0.1",
            "--log-dir", str(log_dir), "--outputs-dir", str(tmp_path / "outputs")]
    monitor = subprocess.Popen([str(ROOT / "monitor.sh"), *args], cwd=ROOT)
    try:
        wait_for_health(port, 180)
        second = subprocess.run([str(ROOT / "monitor.sh"), *args], cwd=ROOT, capture_output=True, text=True,
                                timeout=30)
        assert second.returncode != 0 and "another monitor" in second.stderr

        first = app_pid(port)
        os.kill(first, signal.SIGKILL)
        assert wait_for_new_healthy_pid(port, first, 30, log_dir) <= 30

        hung = app_pid(port)
        stopped_at = time.time()
        os.kill(hung, signal.SIGSTOP)
        wait_for_new_healthy_pid(port, hung, 60, log_dir)
        lines = monitor_log(port, log_dir)
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
    assert any("monitor stopped" in line for line in monitor_log(port, log_dir))
    time.sleep(1)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)


def test_monitor_masks_the_password_survives_a_deleted_log_folder_and_leaves_no_children(tmp_path):
    import psutil

    port = free_port()
    log_dir = tmp_path / "logs"
    args = ["--port", str(port), "--engine", "lite", "--host", "127.0.0.1", "--auth", "admin:hunter2-secret",
            "--log-dir", str(log_dir), "--outputs-dir", str(tmp_path / "outputs")]
    monitor = subprocess.Popen([str(ROOT / "monitor.sh"), *args], cwd=ROOT)
    try:
        wait_for_health(port, 180)
        import shutil

        shutil.rmtree(log_dir)                      # an operator cleans up logs/ under a running monitor
        first = app_pid(port)
        os.kill(first, signal.SIGKILL)
        wait_for_new_healthy_pid(port, first, 40, log_dir)
        children = psutil.Process(monitor.pid).children(recursive=True)
    finally:
        monitor.send_signal(signal.SIGTERM)
        monitor.wait(timeout=60)
    lines = monitor_log(port, log_dir)
    assert any("restarted app" in line for line in lines), lines
    text = (log_dir / "monitor.log").read_text()
    assert "hunter2-secret" not in text and "--auth ***" in text
    time.sleep(1)
    assert not [child for child in children if child.is_running() and child.status() != psutil.STATUS_ZOMBIE]


FORGED = "2026-01-01 00:00:00.000 | ERROR   | req=- | FORGED by the CLI: the disk is on fire"


def test_monitor_masks_the_api_key_and_quotes_only_its_own_apps_lines(tmp_path):
    """runtime.log may be shared with the CLI and tests, app.out holds older runs: a kill -9 is reported as
    a signal, never with a line someone else wrote, and the API key never reaches monitor.log."""
    port = free_port()
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    (log_dir / "app.out").write_text("2026-01-01 00:00:00.000 | ERROR   | req=- | OLD-RUN model dir missing\n")
    args = ["--port", str(port), "--engine", "lite", "--host", "127.0.0.1", "--api-key", "sk-live-SECRET1",
            "--log-dir", str(log_dir), "--outputs-dir", str(tmp_path / "outputs")]
    monitor = subprocess.Popen([str(ROOT / "monitor.sh"), *args], cwd=ROOT,
                               env=dict(os.environ, MONITOR_INTERVAL="1"))
    try:
        wait_for_health(port, 180)
        with open(log_dir / "runtime.log", "a") as shared:      # the CLI, writing to the same logs/
            shared.write(FORGED + "\n")
        first = app_pid(port)
        os.kill(first, signal.SIGKILL)
        wait_for_new_healthy_pid(port, first, 40, log_dir)
    finally:
        monitor.send_signal(signal.SIGTERM)
        monitor.wait(timeout=60)
    lines = monitor_log(port, log_dir)
    [exited] = [line for line in lines if "app exited" in line]
    assert "killed by signal 9 (KILL)" in exited, exited
    assert "FORGED" not in exited and "OLD-RUN" not in exited, exited
    text = (log_dir / "monitor.log").read_text()
    assert "sk-live-SECRET1" not in text and "--api-key ***" in text, text


def test_a_crash_loop_names_its_reason_and_slows_down(tmp_path):
    port = free_port()
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    (log_dir / "runtime.log").write_text(FORGED + "\n")     # shared with the CLI: not this app's reason
    env = dict(os.environ, MONITOR_INTERVAL="1", MONITOR_CRASH_LIMIT="2", MONITOR_SLOW_RETRY="120",
               MONITOR_BACKOFF_MAX="1")
    monitor = subprocess.Popen([str(ROOT / "monitor.sh"), "--port", str(port), "--engine", "lite",
                                "--auth", "admin", "--log-dir", str(log_dir)], cwd=ROOT, env=env)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not any("crash loop" in line for line in monitor_log(port, log_dir)):
            time.sleep(1)
    finally:
        monitor.send_signal(signal.SIGTERM)
        monitor.wait(timeout=60)
    lines = monitor_log(port, log_dir)
    exits = [line for line in lines if "app exited" in line]
    assert exits and all("user:password" in line and "FORGED" not in line for line in exits), lines
    loop = next(line for line in lines if "crash loop" in line)
    assert "| ERROR" in loop and "every 120 s" in loop
