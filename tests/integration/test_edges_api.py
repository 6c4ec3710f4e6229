"""Issue 22's API defects, sent as a client would (raw HTTP where the official client refuses), on the real
app with the lite engine and outputs/ on a small tmpfs of its own, so "disk full" is a real full disk.

Every test asserts the status, the message naming the request id, the request's WARNING/ERROR log line,
that nothing was lost (one complete file per served request, none for a refused one), and that /health
answered within 1 s throughout (a watcher thread polls it during each test)."""
from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import threading
import time
import uuid
from pathlib import Path

import av
import httpx
import pytest
import soundfile as sf

from conftest import ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT, free_port, start_app, stop_app

KEY = "sk-edges"
AUTH = {"Authorization": f"Bearer {KEY}"}
TEXT = "今天天气很好，我们一起去公园散步吧。"
FORMATS = ("wav", "mp3", "opus", "flac", "pcm", "aac")
TMPFS_MB = 48
FLOOR_MB = 8

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount the tmpfs that plays the full disk")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("edges")
    outputs = tmp / "outputs"
    outputs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m", "tmpfs", str(outputs)], check=True)
    running = start_app(tmp, "--engine", "lite", "--api-key", KEY, "--voices-dir", str(tmp / "voices"),
                        "--min-free-mb", str(FLOOR_MB), "--max-text-chars", "2000")
    with open(ZERO_SHOT_PROMPT, "rb") as audio:
        made = httpx.post(f"{running.url}/v1/audio/voices", headers=AUTH, timeout=60,
                          data={"name": "narrator", "transcript": ZERO_SHOT_TRANSCRIPT},
                          files={"audio": ("prompt.wav", audio, "audio/wav")})
    assert made.status_code == 201, made.text
    running.tmp = tmp
    yield running
    stop_app(running)
    subprocess.run(["umount", str(outputs)], check=False)


class HealthWatch(threading.Thread):
    """Polls /health every 0.2 s and keeps every answer's latency (a failure counts as infinitely slow)."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.latencies, self.stopped = url, [], threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            started = time.perf_counter()
            try:
                ok = httpx.get(f"{self.url}/health", timeout=5).status_code == 200
            except httpx.HTTPError:
                ok = False
            self.latencies.append(time.perf_counter() - started if ok else float("inf"))
            self.stopped.wait(0.2)


@pytest.fixture
def health(app):
    """/health answers within 1 s throughout: 95 % of polls under 1 s, none over 3 s. On a box whose cores
    are oversubscribed by other jobs (load per core over 2) the poller and the app both wait for a core,
    so the budget grows with that overload; the load is printed with the failure."""
    watch = HealthWatch(app.url)
    watch.start()
    yield watch
    watch.stopped.set()
    watch.join()
    overload = max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1) / 2)
    ordered = sorted(watch.latencies)
    p95 = ordered[int(0.95 * (len(ordered) - 1))]
    assert p95 < 1.0 * overload and ordered[-1] < 3.0 * overload, \
        f"/health p95 {p95:.2f} s, worst {ordered[-1]:.2f} s (load per core {os.getloadavg()[0] / os.cpu_count():.1f})"


def wavs(app) -> set[str]:
    return {p.name for p in app.outputs_dir.glob("output_*.wav")}


def log_lines(app, request_id: str, level: str, timeout: float = 5) -> list[str]:
    deadline = time.time() + timeout
    while True:
        lines = [line for line in app.log_text().splitlines() if f"req={request_id} " in line and f"| {level}" in line]
        if lines or time.time() > deadline:
            return lines
        time.sleep(0.1)


def post(app, path: str, rid: str, body=None, content: bytes | None = None, **kw) -> httpx.Response:
    headers = {**AUTH, "X-Request-ID": rid, **kw.pop("headers", {})}
    return httpx.post(f"{app.url}{path}", headers=headers, json=body, content=content, timeout=120, **kw)


def assert_refused(app, response: httpx.Response, rid: str, status: int, param: str | None = "any",
                   level: str = "WARNING") -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert f"(request {rid})" in error["message"] and response.headers["x-request-id"] == rid
    if param != "any":
        assert error["param"] == param, error
    assert log_lines(app, rid, level), f"no {level} line for {rid}"
    return error


def speech(**fields) -> dict:
    return {"model": "tts-1", "voice": "narrator", "input": TEXT, "seed": 1, **fields}


def decoded_seconds(data: bytes, response_format: str) -> float:
    if response_format == "pcm":
        return len(data) / 2 / 24000
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        return sum(frame.samples for frame in container.decode(stream)) / stream.codec_context.sample_rate


def sse_events(response: httpx.Response) -> list[dict]:
    return [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]


class Ballast:
    """Fills the tmpfs under outputs/ to leave `free_mb` (0: to the last byte)."""

    def __init__(self, app):
        self.path = app.outputs_dir / "ballast.bin"

    def fill(self, free_mb: float) -> None:
        stat = os.statvfs(self.path.parent)
        size = stat.f_bavail * stat.f_frsize - int(free_mb * 2**20)
        try:
            with open(self.path, "ab", buffering=0) as sink:
                sink.write(b"\0" * max(size, 0))
                while free_mb == 0:                    # to the last block
                    sink.write(b"\0" * 4096)
        except OSError:
            pass

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


# ---- 22.2: never 200 with an empty body; every response_format and stream_format ---------------------------

@pytest.mark.parametrize("stream_format", ["audio", "sse"])
def test_22_2_every_format_streamed_or_whole_is_one_complete_saved_result(app, health, stream_format):
    for response_format in FORMATS:
        for stream in (False, True):
            rid = f"fmt-{response_format}-{stream_format}-{int(stream)}-{uuid.uuid4().hex[:4]}"
            before = wavs(app)
            with httpx.stream("POST", f"{app.url}/v1/audio/speech", headers={**AUTH, "X-Request-ID": rid},
                              json=speech(response_format=response_format, stream_format=stream_format,
                                          stream=stream), timeout=120) as response:
                assert response.status_code == 200
                if stream_format == "sse":
                    events = sse_events(response)
                    audio = b"".join(base64.b64decode(e["audio"]) for e in events
                                     if e["type"] == "speech.audio.delta")
                else:
                    audio = response.read()
            [new] = wavs(app) - before                   # exactly one file for one served request
            saved = sf.info(app.outputs_dir / new)
            assert rid in new and int(response.headers["x-seed"]) == 1
            if stream_format == "sse":
                assert events[-1]["type"] == "speech.audio.done" and events[-1]["file"] == new
            tolerance = 0.12 if response_format in ("mp3", "aac", "opus") else 0.01
            assert abs(decoded_seconds(audio, response_format) - saved.duration) < tolerance, (response_format, stream)


def test_22_2_markup_refused_after_two_requests_run_is_400_not_an_empty_200(app, health):
    """The issue's case: `你好[pause:99]` while two requests run gave 200 and 0 bytes."""
    busy = [threading.Thread(target=post, args=(app, "/v1/audio/speech", f"busy-{i}",
                                                speech(input=TEXT * 6, stream=True))) for i in range(2)]
    for thread in busy:
        thread.start()
    time.sleep(0.5)
    before = wavs(app)
    for response_format in FORMATS:
        for stream_format in ("audio", "sse"):
            rid = f"markup-{response_format}-{stream_format}"
            response = post(app, "/v1/audio/speech", rid, speech(input="你好[pause:99]", stream=True,
                                                                response_format=response_format,
                                                                stream_format=stream_format))
            error = assert_refused(app, response, rid, 400, param="input")
            assert "pause" in error["message"]
    for thread in busy:
        thread.join()
    assert len(wavs(app) - before) == 2              # the two running requests saved; the refusals nothing


def test_22_2_disk_full_after_audio_started_cuts_the_body_and_sends_an_sse_error(app, health):
    ballast = Ballast(app)
    try:
        for stream_format in ("audio", "sse"):
            rid = f"cut-{stream_format}"
            before = wavs(app)
            with httpx.stream("POST", f"{app.url}/v1/audio/speech", headers={**AUTH, "X-Request-ID": rid},
                              json=speech(input=TEXT * 8, stream=True, response_format="pcm",
                                          stream_format=stream_format), timeout=120) as response:
                assert response.status_code == 200
                pieces = response.iter_raw()
                first = next(pieces)                  # audio started; now the disk fills up
                assert first
                ballast.fill(0)
                if stream_format == "audio":
                    with pytest.raises(httpx.RemoteProtocolError):     # the body is cut, never complete
                        for _ in pieces:
                            pass
                else:
                    rest = first + b"".join(pieces)
                    events = [json.loads(line[6:]) for line in rest.decode().splitlines() if line.startswith("data: ")]
                    assert events[-1]["type"] == "error" and not any(e["type"] == "speech.audio.done" for e in events)
                    assert f"(request {rid})" in events[-1]["error"]["message"]
                    assert events[-1]["error"]["code"] == "insufficient_storage"
            ballast.clear()
            assert wavs(app) == before                       # nothing reported saved, nothing half-written
            assert not list(app.outputs_dir.glob(".*.partial"))
            assert log_lines(app, rid, "ERROR")
    finally:
        ballast.clear()


# ---- 22.10 and the full disk: /ready's free-space floor; 507 on speech and dialogue -----------------------

def test_22_10_ready_and_507_follow_the_free_space_floor(app, health):
    ballast = Ballast(app)
    assert httpx.get(f"{app.url}/ready", timeout=5).status_code == 200
    before = wavs(app)
    try:
        ballast.fill(FLOOR_MB / 2)
        time.sleep(2.1)                                   # /ready caches its probe for 2 s
        ready = httpx.get(f"{app.url}/ready", timeout=5)
        assert ready.status_code == 503 and "--min-free-mb" in ready.json()["reason"]
        for stream in (False, True):
            rid = f"full-speech-{int(stream)}"
            error = assert_refused(app, post(app, "/v1/audio/speech", rid, speech(stream=stream)), rid, 507,
                                   level="ERROR")
            assert error["code"] == "insufficient_storage" and "--min-free-mb" in error["message"]
        rid = "full-dialogue"
        response = post(app, "/v1/audio/dialogue", rid, {"script": "[A] 你好。\n[B] 再见。",
                                                        "voices": {"A": "narrator", "B": "narrator"}})
        assert assert_refused(app, response, rid, 507, level="ERROR")["code"] == "insufficient_storage"
        assert wavs(app) == before
    finally:
        ballast.clear()
    time.sleep(2.1)
    assert httpx.get(f"{app.url}/ready", timeout=5).status_code == 200


# ---- 22.11: the file name carries a server-made unique part; X-Request-ID only echoed and logged -----------

def test_22_11_four_requests_with_one_request_id_keep_four_results(app, health):
    before = wavs(app)
    results: list[httpx.Response] = []
    threads = [threading.Thread(target=lambda seed=seed: results.append(
        post(app, "/v1/audio/speech", "dupid", speech(seed=seed, response_format="wav")))) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.status_code for r in results) == [200] * 4
    assert all(r.headers["x-request-id"] == "dupid" for r in results)
    new = wavs(app) - before
    assert len(new) == 4 and all(name.endswith("_dupid.wav") for name in new)
    served = {sf.read(io.BytesIO(r.content), dtype="int16")[0].tobytes() for r in results}
    kept = {sf.read(app.outputs_dir / name, dtype="int16")[0].tobytes() for name in new}
    assert served == kept and len(kept) == 4                 # each response is exactly one of the saved files
    assert len([line for line in app.log_text().splitlines() if "req=dupid " in line and "SUCCESS" in line]) >= 4
    # a request "abc-1" and a dialogue "abc" (whose turns were once saved as abc-1, abc-2) keep their own files
    before = wavs(app)
    assert post(app, "/v1/audio/dialogue", "abc", {"script": "[A] 你好。\n[B] 再见。",
                                                   "voices": {"A": "narrator", "B": "narrator"}}).status_code == 200
    assert post(app, "/v1/audio/speech", "abc-1", speech(response_format="wav")).status_code == 200
    assert sorted(name.rsplit("_", 1)[1] for name in wavs(app) - before) == ["abc-1.wav", "abc.wav"]


# ---- 22.16: 400 (never 500) for numbers and JSON no request can hold; one seed rule everywhere ---------------

BAD_BODIES = [
    ("/v1/audio/speech", '{"model":"tts-1","voice":"narrator","input":"你好","seed":1' + "0" * 400 + "}", "seed"),
    ("/v1/audio/speech", '{"a":' * 100000 + "1" + "}" * 100000, None),
    ("/v1/audio/dialogue", '{"script":"[A] 你好","voices":{"A":"narrator"},"seed":Infinity}', None),
    ("/v1/audio/speech", '{"model":"tts-1","voice":"narrator","input":"你好","speed":NaN}', None),
    ("/v1/audio/speech", '{"model":"whisper-1","voice":"narrator","input":"你好"}', "model"),
]


@pytest.mark.parametrize("path,body,param", BAD_BODIES, ids=["seed-10e400", "nested-100000", "dialogue-infinity",
                                                             "speed-nan", "unknown-model"])
def test_22_16_impossible_numbers_and_json_are_400(app, health, path, body, param):
    rid = f"bad-{uuid.uuid4().hex[:6]}"
    before = wavs(app)
    response = post(app, path, rid, content=body.encode(), headers={"Content-Type": "application/json"})
    assert_refused(app, response, rid, 400, param=param if param else "any")
    assert wavs(app) == before


def test_22_16_only_utf8_json_is_taken(app, health):
    body = json.dumps(speech(), ensure_ascii=False)
    for encoding in ("utf-16", "utf-32"):
        rid = f"enc-{encoding}"
        response = post(app, "/v1/audio/speech", rid, content=body.encode(encoding),
                        headers={"Content-Type": "application/json"})
        assert "UTF-8" in assert_refused(app, response, rid, 400)["message"]


def test_22_16_dialogue_refuses_a_bad_seed_exactly_as_speech_does(app, health):
    for seed in ("abc", 1.5, 2**40, True):
        speech_error = assert_refused(app, post(app, "/v1/audio/speech", "seed-s", speech(seed=seed)), "seed-s", 400,
                                      param="seed")
        dialogue_error = assert_refused(app, post(app, "/v1/audio/dialogue", "seed-d", {
            "script": "[A] 你好。", "voices": {"A": "narrator"}, "seed": seed}), "seed-d", 400, param="seed")
        assert speech_error["message"].replace("seed-s", "") == dialogue_error["message"].replace("seed-d", "")


# ---- 22.4: turn details in the body (GET), ids in headers; 200 turns through the shipped nginx ---------------

@pytest.mark.slow
def test_22_4_a_200_turn_dialogue_passes_the_shipped_nginx(app, health, tmp_path):
    from test_deploy_nginx import Nginx

    class Upstream:
        addr = f"127.0.0.1:{app.port}"

    nginx = Nginx(tmp_path / "nginx", free_port())
    nginx.render([Upstream()], [])
    nginx.start()
    try:
        speakers = [f"Speaker-{'x' * 50}-{i}" for i in range(4)]
        script = "\n".join(f"[{speakers[i % 4]}] 好。" for i in range(200))
        before = wavs(app)
        response = httpx.post(f"{nginx.url}/v1/audio/dialogue", headers={**AUTH, "X-Request-ID": "long-dialogue"},
                              json={"script": script, "voices": {s: "narrator" for s in speakers}, "gap": 0.05,
                                    "seed": 3}, timeout=600)
        assert response.status_code == 200, response.text[:300]
        assert sum(len(k) + len(v) for k, v in response.headers.items()) < 1024     # ids only
        [new] = wavs(app) - before
        assert response.headers["x-dialogue-id"] == Path(new).stem
        details = httpx.get(f"{nginx.url}/v1/audio/dialogue/{response.headers['x-dialogue-id']}", headers=AUTH,
                            timeout=30).json()
        turns = details["turns"]
        assert len(turns) == 200 and [t["speaker"] for t in turns[:5]] == [speakers[i % 4] for i in range(5)]
        assert abs(sf.info(io.BytesIO(response.content)).duration - turns[-1]["end"]) < 0.001
        assert abs(sf.info(app.outputs_dir / new).duration - turns[-1]["end"]) < 0.001
        missing = httpx.get(f"{nginx.url}/v1/audio/dialogue/output_20000101_000000_00000000_x", headers=AUTH,
                            timeout=10)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "dialogue_not_found"
    finally:
        nginx.stop()
