"""Browsers cannot be used against the API: what a page on another site can make a visitor's browser send
(a text/plain "simple" POST, a multipart form, a DELETE) is refused before it does anything, while the
app's own pages, gradio_client, SDKs and an allowed front end (--allow-origin) keep working."""
from __future__ import annotations

import httpx
import pytest

from browser import browser_session, requires_browser
from conftest import ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT, start_app, stop_app
from integration.test_security import health_within_1s, warning_for

FRONT = "https://front.example"
EVIL = "https://evil.example"


@pytest.fixture(scope="module")
def open_app(tmp_path_factory):
    """No --api-key, no --auth: the case where only the origin check stands between a page and the API."""
    tmp = tmp_path_factory.mktemp("cross_site")
    app = start_app(tmp, "--engine", "lite", "--voices-dir", str(tmp / "voices"), "--allow-origin", FRONT)
    yield app
    stop_app(app)


def voice_ids(app) -> list[str]:
    return [v["id"] for v in httpx.get(f"{app.url}/v1/audio/voices", timeout=10).json()["data"]]


def outputs(app) -> list:
    return sorted(app.outputs_dir.rglob("*.wav")) if app.outputs_dir.exists() else []


def create_voice(app, name: str, headers: dict | None = None) -> httpx.Response:
    with open(ZERO_SHOT_PROMPT, "rb") as audio:
        return httpx.post(f"{app.url}/v1/audio/voices", data={"name": name, "transcript": ZERO_SHOT_TRANSCRIPT},
                          files={"audio": ("prompt.wav", audio, "audio/wav")}, headers=headers or {}, timeout=120)


SPEECH = '{"model":"tts-1","input":"你好。","voice":"kept","response_format":"wav"}'.encode()


def speech(app, headers: dict) -> httpx.Response:
    return httpx.post(f"{app.url}/v1/audio/speech", content=SPEECH, headers=headers, timeout=120)


def assert_refused(app, response: httpx.Response, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    request_id = response.headers["x-request-id"]
    error = response.json()["error"]
    message = error["message"] if isinstance(error, dict) else error
    assert words in message
    if isinstance(error, dict):
        assert f"(request {request_id})" in message
    assert words in warning_for(app, request_id)


def test_pages_on_other_sites_cannot_synthesise_create_or_delete(open_app):
    assert create_voice(open_app, "kept").status_code == 201           # a script (no Origin) may
    before_voices, before_outputs = voice_ids(open_app), outputs(open_app)
    json_headers = {"Content-Type": "application/json"}
    assert_refused(open_app, speech(open_app, {"Origin": EVIL, "Content-Type": "text/plain"}), 403,
                   "Cross-site request refused")
    assert_refused(open_app, speech(open_app, {"Sec-Fetch-Site": "cross-site"} | json_headers), 403,
                   "Cross-site request refused")
    assert_refused(open_app, speech(open_app, {"Origin": "null"} | json_headers), 403, "Cross-site request refused")
    assert_refused(open_app, create_voice(open_app, "voice_impostor", {"Origin": EVIL}), 403,
                   "Cross-site request refused")
    deleted = httpx.delete(f"{open_app.url}/v1/audio/voices/{before_voices[0]}", timeout=10,
                           headers={"Origin": EVIL, "Sec-Fetch-Site": "cross-site"})
    assert_refused(open_app, deleted, 403, "Cross-site request refused")
    upload = httpx.post(f"{open_app.url}/gradio_api/upload", headers={"Origin": EVIL}, timeout=10,
                        files={"files": ("a.wav", ZERO_SHOT_PROMPT.read_bytes(), "audio/wav")})
    assert_refused(open_app, upload, 403, "Cross-site request refused")
    assert voice_ids(open_app) == before_voices and outputs(open_app) == before_outputs
    health_within_1s(open_app)


def test_json_routes_refuse_a_body_that_is_not_declared_json(open_app):
    before = outputs(open_app)
    assert_refused(open_app, speech(open_app, {"Content-Type": "text/plain"}), 415, "application/json")
    assert_refused(open_app, speech(open_app, {"Content-Type": "application/x-www-form-urlencoded"}), 415,
                   "application/json")
    assert_refused(open_app, httpx.post(f"{open_app.url}/v1/audio/voices", content=b"{}", timeout=10,
                                        headers={"Content-Type": "text/plain"}), 415, "multipart/form-data")
    assert outputs(open_app) == before
    health_within_1s(open_app)


def test_same_origin_and_allowed_origins_still_work(open_app):
    if "kept" not in [v["name"] for v in httpx.get(f"{open_app.url}/v1/audio/voices", timeout=10).json()["data"]]:
        assert create_voice(open_app, "kept").status_code == 201
    same = speech(open_app, {"Origin": open_app.url, "Sec-Fetch-Site": "same-origin",
                             "Content-Type": "application/json"})
    assert same.status_code == 200 and len(same.content) > 1000
    preflight = httpx.options(f"{open_app.url}/v1/audio/speech", timeout=10,
                              headers={"Origin": FRONT, "Access-Control-Request-Method": "POST",
                                       "Access-Control-Request-Headers": "content-type"})
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == FRONT
    front = speech(open_app, {"Origin": FRONT, "Sec-Fetch-Site": "cross-site", "Content-Type": "application/json"})
    assert front.status_code == 200 and front.headers["access-control-allow-origin"] == FRONT
    evil_preflight = httpx.options(f"{open_app.url}/v1/audio/speech", timeout=10,
                                   headers={"Origin": EVIL, "Access-Control-Request-Method": "POST"})
    assert evil_preflight.headers.get("access-control-allow-origin") != EVIL


def test_gradio_client_still_works(open_app):
    from gradio_client import handle_file

    path = open_app.client().predict(text="你好。", mode="zero_shot", prompt_wav=handle_file(str(ZERO_SHOT_PROMPT)),
                                     prompt_text=ZERO_SHOT_TRANSCRIPT, instruct_text="", seed=1, speed=1.0,
                                     stream=False, normalize=True, voice="", api_name="/synthesize")
    assert path.endswith(".wav")


@pytest.mark.slow
@requires_browser
def test_the_ui_still_uploads_and_synthesises_from_its_own_origin(open_app):
    refused_before = open_app.log_text().count("Cross-site request refused")
    with browser_session() as open_page:
        page = open_page(open_app.url)
        page.locator("#prompt-audio input[type=file]").set_input_files(str(ZERO_SHOT_PROMPT))
        page.locator("#prompt-text textarea").fill(ZERO_SHOT_TRANSCRIPT)
        page.locator("#text-input textarea").fill("你好。")
        page.wait_for_timeout(1500)
        page.get_by_role("button", name="生成 Generate").click()
        page.locator("#result").get_by_text("Saved").wait_for(timeout=120000)
    assert open_app.log_text().count("Cross-site request refused") == refused_before
