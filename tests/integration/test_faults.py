"""Disk and log faults an operator runs into, and a polite stop: the service keeps serving and says what to do."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from conftest import PYTHON, ROOT, ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT, start_app, stop_app, synthesize_as

pytestmark = pytest.mark.slow          # each starts its own app (CI runs them with -m slow)


def wait_ready(app, want: int, timeout: float = 60) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        response = httpx.get(f"{app.url}/ready", timeout=2)
        if response.status_code == want:
            return response.json()
        time.sleep(0.3)
    raise AssertionError(f"/ready did not answer {want} within {timeout} s: {response.text}")


def log_lines(log_dir: Path, request_id: str) -> list[str]:
    path = log_dir / "runtime.log"
    deadline = time.time() + 5
    while time.time() < deadline:
        if path.exists():
            lines = [line for line in path.read_text().splitlines() if f"req={request_id} " in line]
            if lines:
                return lines
        time.sleep(0.2)
    return []


def test_unwritable_outputs_is_a_clear_error_ready_turns_503_and_the_fix_is_picked_up(tmp_path):
    app = start_app(tmp_path, "--engine", "lite")
    try:
        wait_ready(app, 200)
        shutil.rmtree(app.outputs_dir, ignore_errors=True)
        app.outputs_dir.write_text("not a folder")           # as root, a file in its place is what blocks writes
        with pytest.raises(Exception) as refused:
            synthesize_as(app, "disk-1")
        assert "could not be saved" in str(refused.value) and str(app.outputs_dir) in str(refused.value)
        assert any("| ERROR   |" in line and "could not be saved" in line for line in log_lines(app.log_dir, "disk-1"))
        reason = wait_ready(app, 503)["reason"]
        assert str(app.outputs_dir) in reason and "not a folder" in reason
        assert httpx.get(f"{app.url}/health", timeout=1).status_code == 200
        app.outputs_dir.unlink()
        app.outputs_dir.mkdir()
        wait_ready(app, 200, timeout=10)
        assert Path(synthesize_as(app, "disk-2")).exists()
    finally:
        stop_app(app)


def test_a_deleted_log_folder_is_recreated_on_the_next_line(tmp_path):
    app = start_app(tmp_path, "--engine", "lite")
    try:
        wait_ready(app, 200)
        shutil.rmtree(app.log_dir)
        synthesize_as(app, "logs-1")
        lines = log_lines(app.log_dir, "logs-1")
        assert any("SUCCESS" in line for line in lines), lines
    finally:
        stop_app(app)


def test_a_full_or_unwritable_log_falls_back_to_stderr_with_one_warning(tmp_path):
    full_dir = tmp_path / "full_logs"
    full_dir.mkdir()
    (full_dir / "runtime.log").symlink_to("/dev/full")       # every write fails with "No space left"
    app = start_app(tmp_path, "--engine", "lite", "--log-dir", str(full_dir))
    try:
        wait_ready(app, 200)
        synthesize_as(app, "full-1")
        out = (tmp_path / "app.out").read_text(errors="replace")
        assert out.count("cannot write the log file") == 1, out[-2000:]
        assert "req=full-1" in out and "SUCCESS" in out
        assert "Traceback" not in out
    finally:
        stop_app(app)

    blocked = tmp_path / "a_file"
    blocked.write_text("x")
    app = start_app(tmp_path, "--engine", "lite", "--log-dir", str(blocked / "logs"))
    try:
        wait_ready(app, 200)
        assert "cannot write the log file" in (tmp_path / "app.out").read_text(errors="replace")
    finally:
        stop_app(app)


def test_partial_files_left_by_a_killed_run_are_removed_at_start_up(tmp_path):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    stale = outputs / ".output_20260101_000000_dead01.abc.partial"
    stale.write_bytes(b"half a wav")
    old = time.time() - 600
    os.utime(stale, (old, old))
    app = start_app(tmp_path, "--engine", "lite")
    try:
        assert not stale.exists()
        assert "removed 1 partial file" in app.log_text()
    finally:
        stop_app(app)


def test_sigterm_lets_the_running_request_finish_then_logs_stopped(tmp_path):
    app = start_app(tmp_path, "--engine", "lite")
    result: dict = {}
    long_text = "今天天气很好，我们一起去公园散步吧。" * 6

    def client():
        try:
            result["path"] = synthesize_as(app, "term-1", long_text)
        except Exception as err:      # noqa: BLE001 - the assertion below says what went wrong
            result["error"] = err

    try:
        wait_ready(app, 200)
        thread = threading.Thread(target=client)
        thread.start()
        deadline = time.time() + 30
        while "req=term-1 | piece" not in app.log_text() and time.time() < deadline:
            time.sleep(0.1)
        app.proc.send_signal(signal.SIGTERM)
        thread.join(timeout=60)
        assert app.proc.wait(timeout=60) == 0
    finally:
        if app.proc.poll() is None:
            app.proc.kill()
    assert "path" in result, result
    assert Path(result["path"]).exists()
    log = app.log_text()
    assert "SIGTERM received" in log and "stopped (signal SIGTERM" in log
    assert log.index("req=term-1 | saved") < log.index("stopped (signal SIGTERM")


def test_cli_out_may_name_a_folder(tmp_path):
    target = tmp_path / "results"
    target.mkdir()
    result = subprocess.run([PYTHON, "-m", "cosyvoice", "synth", "--engine", "lite", "--text", "你好。",
                             "--prompt-wav", str(ZERO_SHOT_PROMPT), "--prompt-text", ZERO_SHOT_TRANSCRIPT,
                             "--seed", "1", "--out", str(target), "--outputs-dir", str(tmp_path / "outputs"),
                             "--log-dir", str(tmp_path / "logs")],
                            cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    copied = Path(result.stdout.strip().splitlines()[-1])
    assert copied.parent == target and copied.suffix == ".wav" and copied.stat().st_size > 1000
    assert not [p for p in target.iterdir() if p.name.endswith(".partial")]
    assert "seed: 1" in result.stderr
