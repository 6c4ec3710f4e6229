from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("COSYVOICE_SHARED", ROOT.parent / "shared"))
AUDIO = SHARED / "audio"
FIXTURE = SHARED / "fixtures" / "cosyvoice3-tiny"
ZERO_SHOT_PROMPT = AUDIO / "zero_shot_prompt.wav"
ZERO_SHOT_TRANSCRIPT = "希望你以后能够做的比我还好呦。"
PYTHON = sys.executable


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than ~20 s; run with -m slow (CI runs them too)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_health(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"app exited with code {proc.returncode} before answering /health")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"/health on port {port} did not answer within {timeout} s")


class RunningApp:
    def __init__(self, port: int, proc: subprocess.Popen, log_dir: Path, outputs_dir: Path):
        self.port, self.proc, self.log_dir, self.outputs_dir = port, proc, log_dir, outputs_dir
        self.url = f"http://127.0.0.1:{port}"

    def client(self):
        from gradio_client import Client

        return Client(self.url, verbose=False)

    def log_text(self) -> str:
        return (self.log_dir / "runtime.log").read_text(encoding="utf-8")


def start_app(tmp: Path, *extra: str, timeout: float = 180) -> RunningApp:
    port = free_port()
    log_dir, outputs_dir = tmp / "logs", tmp / "outputs"
    cmd = [PYTHON, str(ROOT / "app.py"), "--port", str(port), "--log-dir", str(log_dir),
           "--outputs-dir", str(outputs_dir), *extra]
    out = open(tmp / "app.out", "ab")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_health(port, timeout, proc)
    except Exception:
        proc.kill()
        raise RuntimeError((tmp / "app.out").read_text(errors="replace")[-3000:])
    return RunningApp(port, proc, log_dir, outputs_dir)


def stop_app(app: RunningApp) -> None:
    app.proc.terminate()
    try:
        app.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        app.proc.kill()


@pytest.fixture(scope="session")
def lite_app(tmp_path_factory):
    """The real app on the embedded engine, started once for the UI/API tests."""
    tmp = tmp_path_factory.mktemp("lite_app")
    app = start_app(tmp, "--engine", "lite", "--max-text-chars", "300")
    yield app
    stop_app(app)


def synthesize_as(app: RunningApp, request_id: str, text: str = "你好。") -> str:
    """One zero-shot /synthesize call through gradio_client under a given X-Request-ID; the saved path."""
    from gradio_client import handle_file

    client = app.client()
    client.headers["X-Request-ID"] = request_id
    return client.predict(text=text, mode="zero_shot", prompt_wav=handle_file(str(ZERO_SHOT_PROMPT)),
                          prompt_text=ZERO_SHOT_TRANSCRIPT, instruct_text="", seed=1, speed=1.0, stream=False,
                          normalize=True, api_name="/synthesize")


def request_log_lines(app: RunningApp, request_id: str, timeout: float = 5) -> list[str]:
    """runtime.log lines of one request, waiting (briefly) until its SUCCESS or WARNING line is there."""
    deadline = time.time() + timeout
    while True:
        lines = [line for line in app.log_text().splitlines() if f"req={request_id} " in line]
        if any("SUCCESS" in line or "WARNING" in line for line in lines) or time.time() > deadline:
            return lines
        time.sleep(0.2)
