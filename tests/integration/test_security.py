"""The app as an attacker (or an unlucky client) meets it: raw HTTP, the way a script would send it.

Each test asserts what the client is told, the WARNING line with the request id in runtime.log,
that nothing was copied or served, and that /health kept answering within 1 s.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from conftest import ROOT, ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT, start_app, stop_app
from cosyvoice.server.http_guard import PATH_REFUSED


def cache_dir(app) -> Path:
    return ROOT / ".run" / f"gradio-{app.port}"


def call(app, data: list, request_id: str, endpoint: str = "synthesize") -> tuple[int, str]:
    """POST /gradio_api/call/<endpoint> and, when accepted, read its event stream to the end."""
    body = json.dumps({"data": data})          # NaN and Infinity as a script's JSON encoder writes them
    response = httpx.post(f"{app.url}/gradio_api/call/{endpoint}", content=body, timeout=30,
                          headers={"X-Request-ID": request_id, "content-type": "application/json"})
    if response.status_code != 200:
        return response.status_code, response.text
    event_id = response.json()["event_id"]
    stream = httpx.get(f"{app.url}/gradio_api/call/{endpoint}/{event_id}", timeout=120)
    return stream.status_code, stream.text


def file_payload(path: str) -> dict:
    return {"path": path, "meta": {"_type": "gradio.FileData"}}


def api_data(prompt, **overrides) -> list:
    fields = {"text": "你好。", "mode": "zero_shot", "prompt": prompt, "prompt_text": ZERO_SHOT_TRANSCRIPT,
              "instruct": "", "seed": 1, "speed": 1.0, "stream": False, "normalize": True, "voice": ""} | overrides
    return list(fields.values())


def health_within_1s(app) -> None:
    started = time.perf_counter()
    assert httpx.get(f"{app.url}/health", timeout=1).status_code == 200
    assert time.perf_counter() - started < 1.0


def warning_for(app, request_id: str) -> str:
    from cosyvoice.ops.log import flush

    flush()
    deadline = time.time() + 5
    while time.time() < deadline:
        lines = [line for line in app.log_text().splitlines() if f"req={request_id} " in line]
        hits = [line for line in lines if "| WARNING |" in line or "| ERROR   |" in line]
        if hits:
            return "\n".join(hits)
        time.sleep(0.2)
    raise AssertionError(f"no WARNING/ERROR line for req={request_id}")


def files_named(folder: Path, name: str) -> list[Path]:
    return [p for p in folder.rglob(name)] if folder.exists() else []


@pytest.fixture()
def secret(tmp_path) -> Path:
    path = tmp_path / "secret.txt"
    path.write_text("top secret " + uuid.uuid4().hex)
    return path


@pytest.mark.parametrize("endpoint", ["synthesize", "generate"])
def test_server_files_are_never_read_copied_or_served(lite_app, secret, endpoint):
    for target in (str(secret), "/etc/shadow", "/etc/passwd", str(secret) + ".missing", "../../etc/hosts"):
        request_id = f"sec{uuid.uuid4().hex[:6]}"
        status, body = call(lite_app, api_data(file_payload(target)), request_id, endpoint)
        assert status == 400 and PATH_REFUSED in body, body
        assert "secret" not in body.lower() or target not in body      # the path is not echoed back
        assert "refused" in warning_for(lite_app, request_id)
        health_within_1s(lite_app)
    # The same one message whether the file exists or not.
    _, exists = call(lite_app, api_data(file_payload(str(secret))), "sec-exist", endpoint)
    _, missing = call(lite_app, api_data(file_payload(str(secret) + ".nope")), "sec-missing", endpoint)
    assert json.loads(exists)["error"] == json.loads(missing)["error"]
    assert not files_named(cache_dir(lite_app), secret.name)
    served = httpx.get(f"{lite_app.url}/gradio_api/file={secret}", timeout=5)
    assert served.status_code in (403, 404) and secret.read_text() not in served.text


def test_a_link_planted_in_the_upload_folder_is_refused(lite_app, secret):
    folder = cache_dir(lite_app) / "planted"
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "voice.wav"
    link.unlink(missing_ok=True)
    link.symlink_to(secret)
    try:
        status, body = call(lite_app, api_data(file_payload(str(link))), "sec-link")
        assert status == 400 and PATH_REFUSED in body
        assert "refused" in warning_for(lite_app, "sec-link")
    finally:
        link.unlink()


def test_dev_zero_does_not_hang_the_app(lite_app):
    results = {}

    def attack():
        results["attack"] = call(lite_app, api_data(file_payload("/dev/zero")), "sec-zero")

    thread = threading.Thread(target=attack)
    thread.start()
    for _ in range(5):
        health_within_1s(lite_app)
        time.sleep(0.1)
    thread.join(timeout=30)
    status, body = results["attack"]
    assert status == 400 and PATH_REFUSED in body
    assert "refused" in warning_for(lite_app, "sec-zero")
    health_within_1s(lite_app)


def _upload(app, path: Path) -> dict:
    with open(path, "rb") as handle:
        response = httpx.post(f"{app.url}/gradio_api/upload", files={"files": (path.name, handle)}, timeout=60)
    assert response.status_code == 200, response.text
    return file_payload(response.json()[0])


def test_decompression_bomb_is_refused_by_its_decoded_length(lite_app, tmp_path):
    import psutil

    bomb = tmp_path / "hour_of_silence.flac"
    with sf.SoundFile(bomb, "w", samplerate=16000, channels=1, format="FLAC") as out:
        block = np.zeros(16000 * 60, np.float32)
        for _ in range(60):
            out.write(block)
    assert bomb.stat().st_size < 2 * 2**20
    rss_before = psutil.Process(lite_app.proc.pid).memory_info().rss
    status, body = call(lite_app, api_data(_upload(lite_app, bomb)), "sec-bomb")
    rss_after = psutil.Process(lite_app.proc.pid).memory_info().rss
    assert "at most 120 s are read" in body and "(req sec-bomb)" in body
    assert "refused" in warning_for(lite_app, "sec-bomb")
    assert rss_after - rss_before < 200 * 2**20
    health_within_1s(lite_app)


def test_oversized_upload_is_refused_before_it_is_stored(lite_app):
    size = 40 * 2**20                       # over the 25 MB default
    before = {p.name for p in cache_dir(lite_app).rglob("*")}

    head = b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.wav\"\r\n\r\n"
    tail = b"\r\n--b--\r\n"

    def body():
        yield head
        for _ in range(size // 2**20):
            yield b"\0" * 2**20
        yield tail

    try:
        response = httpx.post(f"{lite_app.url}/gradio_api/upload", content=body(), timeout=30,
                              headers={"content-type": "multipart/form-data; boundary=b",
                                       "content-length": str(len(head) + size + len(tail)),
                                       "X-Request-ID": "sec-big"})
        status, text = response.status_code, response.text
    except httpx.HTTPError:                # the server may close the connection while we still send
        status, text = 413, "limit"
    assert status == 413 and "limit" in text
    assert "refused upload" in warning_for(lite_app, "sec-big")
    assert {p.name for p in cache_dir(lite_app).rglob("*")} - before == set()
    health_within_1s(lite_app)


def test_results_are_served_from_outputs_not_copied_into_the_cache(lite_app):
    client = lite_app.client()
    from gradio_client import handle_file

    path = client.predict(text="你好。", mode="zero_shot", prompt_wav=handle_file(str(ZERO_SHOT_PROMPT)),
                          prompt_text=ZERO_SHOT_TRANSCRIPT, instruct_text="", seed=3, speed=1.0, stream=False,
                          normalize=True, api_name="/synthesize")
    name = Path(path).name
    assert (lite_app.outputs_dir / name).exists()
    assert not files_named(cache_dir(lite_app), name)


@pytest.mark.parametrize("field,value,message", [
    ("speed", "fast", "speed must be a number"),
    ("seed", "abc", "seed must be a number"),
    ("seed", float("nan"), "finite number"),
    ("seed", float("inf"), "finite number"),
    ("seed", 1.5, "not a whole number"),
    ("text", ["你好"], "must be text"),
    ("text", {"a": 1}, "must be text"),
    ("speed", 9, "out of range"),
    ("mode", "karaoke", "Unknown mode"),
    ("prompt_text", "字" * 400, "limit is 300"),
    ("instruct", "快" * 300, "limit is 200"),
    ("stream", "maybe", "true or false"),
])
def test_badly_typed_parameters_get_the_services_message(lite_app, field, value, message):
    request_id = f"typ{uuid.uuid4().hex[:6]}"
    prompt = _upload(lite_app, ZERO_SHOT_PROMPT)
    overrides = {field: value} | ({"mode": "instruct"} if field == "instruct" else {})
    status, body = call(lite_app, api_data(prompt, **overrides), request_id)
    assert "event: error" in body and message in body and f"(req {request_id})" in body, body
    assert "gradio" not in body.lower() and "Traceback" not in body and "object at 0x" not in body
    assert message in warning_for(lite_app, request_id)
    health_within_1s(lite_app)


def test_text_nobody_can_speak_is_a_warning_with_advice(lite_app):
    prompt = _upload(lite_app, ZERO_SHOT_PROMPT)
    for request_id, text in (("emo-1", "😀😀🎉"), ("ara-1", "مرحبا بالعالم")):
        status, body = call(lite_app, api_data(prompt, text=text), request_id)
        assert "event: error" in body, body
        line = warning_for(lite_app, request_id)
        assert "| WARNING |" in line and "| ERROR   |" not in line, line


@pytest.fixture(scope="module")
def auth_app(tmp_path_factory):
    app = start_app(tmp_path_factory.mktemp("auth_app"), "--engine", "lite", "--auth", "admin:s3cret-pw")
    yield app
    stop_app(app)


def test_with_auth_docs_metrics_and_version_need_a_login_health_and_ready_do_not(auth_app):
    for path in ("/docs", "/openapi.json", "/metrics", "/version"):
        assert httpx.get(auth_app.url + path, timeout=5).status_code == 401, path
        assert httpx.get(auth_app.url + path, auth=("admin", "s3cret-pw"), timeout=5).status_code == 200, path
        assert httpx.get(auth_app.url + path, auth=("admin", "wrong"), timeout=5).status_code == 401, path
    assert httpx.get(auth_app.url + "/health", timeout=5).status_code == 200
    assert httpx.get(auth_app.url + "/ready", timeout=5).status_code in (200, 503)


def test_wrong_passwords_are_answered_more_and_more_slowly(auth_app):
    statuses = []
    for attempt in range(6):
        response = httpx.post(auth_app.url + "/login", data={"username": "admin", "password": f"guess{attempt}"},
                              timeout=10)
        statuses.append(response.status_code)
    assert 429 in statuses, statuses
    refused = httpx.post(auth_app.url + "/login", data={"username": "admin", "password": "guess"}, timeout=10)
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert "Too many failed logins" in refused.text
    assert "failed login" in auth_app.log_text()
    assert "s3cret-pw" not in auth_app.log_text()


def test_a_malformed_auth_flag_stops_the_start_with_a_clear_message(tmp_path):
    import subprocess

    from conftest import PYTHON, free_port

    result = subprocess.run([PYTHON, str(ROOT / "app.py"), "--engine", "lite", "--port", str(free_port()),
                             "--auth", "admin", "--log-dir", str(tmp_path / "logs")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "user:password" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
