"""Helpers for the voice tests that go through the real app's /v1 API as a client would (raw HTTP)."""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

from conftest import ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT


def post_voice(app, name: str, request_id: str, prompt: Path = ZERO_SHOT_PROMPT,
               transcript: str = ZERO_SHOT_TRANSCRIPT) -> httpx.Response:
    with open(prompt, "rb") as audio:
        return httpx.post(f"{app.url}/v1/audio/voices", headers={"X-Request-ID": request_id},
                          data={"name": name, "transcript": transcript},
                          files={"audio": (Path(prompt).name, audio, "audio/wav")}, timeout=120)


def speech(app, voice: str, request_id: str, text: str = "你好。") -> httpx.Response:
    return httpx.post(f"{app.url}/v1/audio/speech", headers={"X-Request-ID": request_id},
                      json={"model": "tts-1", "input": text, "voice": voice, "response_format": "wav",
                            "seed": 7}, timeout=120)


def list_voices(app) -> list[dict]:
    response = httpx.get(f"{app.url}/v1/audio/voices", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["data"]


def voice_state(app) -> list[tuple]:
    """What a client sees of the library: (id, name, sha256, status) per voice."""
    return sorted((v["id"], v["name"], v.get("sha256"), v["status"]) for v in list_voices(app))


def error_message(response: httpx.Response, request_id: str) -> str:
    message = response.json()["error"]["message"]
    assert f"(request {request_id})" in message and response.headers["x-request-id"] == request_id
    return message


def log_lines(app, request_id: str, level: str, timeout: float = 5) -> list[str]:
    """runtime.log lines of one request at one level (waiting briefly for them to be written)."""
    deadline = time.time() + timeout
    while True:
        lines = [line for line in app.log_text().splitlines() if f"req={request_id} " in line and level in line]
        if lines or time.time() > deadline:
            return lines
        time.sleep(0.2)


@contextmanager
def health_stays_fast(app, limit_s: float = 1.0):
    """/health polled throughout the block; every answer must be 200 within `limit_s`."""
    slow: list[str] = []
    stop = threading.Event()

    def poll():
        with httpx.Client(timeout=limit_s * 5) as client:
            while not stop.is_set():
                check(client)
                stop.wait(0.25)

    def check(client: httpx.Client):
        started = time.perf_counter()
        try:
            status = client.get(f"{app.url}/health").status_code
        except httpx.HTTPError as err:
            status = repr(err)
        took = time.perf_counter() - started
        if status != 200 or took > limit_s:
            slow.append(f"{status} after {took:.2f} s")

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)
    assert not slow, f"/health was slow or failing: {slow}"
