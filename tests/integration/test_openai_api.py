"""The /v1 API through the official `openai` Python package, on the real app with the lite engine."""
from __future__ import annotations

import base64
import io
import json
import os
import re
from pathlib import Path

import av
import httpx
import numpy as np
import openai
import pytest
import soundfile as sf
from gradio_client import handle_file

import audio_variants
from conftest import ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT, request_log_lines, start_app, stop_app

KEY = "sk-test-cosyvoice"
TEXT = "今天天气很好，我们一起去公园散步吧。"


@pytest.fixture(scope="module")
def api_app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("openai_app")
    app = start_app(tmp, "--engine", "lite", "--api-key", KEY, "--voices-dir", str(tmp / "voices"),
                    "--max-upload-mb", "1")
    app.tmp = tmp
    yield app
    stop_app(app)


def client_for(app, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{app.url}/v1", api_key=key, max_retries=0, timeout=120)


def create_voice(client: openai.OpenAI, name: str, transcript: str = ZERO_SHOT_TRANSCRIPT, prompt=ZERO_SHOT_PROMPT):
    with open(prompt, "rb") as audio:
        return client.audio.voices.create(name=name, audio_sample=audio, consent="self",
                                          extra_body={"transcript": transcript})


@pytest.fixture(scope="module")
def narrator(api_app):
    return create_voice(client_for(api_app), "narrator")


def saved_output(app, request_id: str) -> Path:
    [path] = app.outputs_dir.glob(f"output_*_{request_id}.wav")
    return path


def decoded_seconds(data: bytes) -> float:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        frames = sum(frame.samples for frame in container.decode(stream))
        return frames / stream.codec_context.sample_rate


@pytest.mark.parametrize("response_format", ["wav", "mp3", "flac"])
def test_speech_decodes_to_the_saved_results_duration(api_app, narrator, response_format):
    response = client_for(api_app).audio.speech.with_raw_response.create(
        model="tts-1", voice="narrator", input=TEXT, response_format=response_format, extra_body={"seed": 4})
    data = response.content
    saved = saved_output(api_app, response.headers["x-request-id"])
    expected = sf.info(saved).duration
    assert expected > 1.5
    # mp3 frames pad the end by up to one frame (1152 samples) plus the encoder delay
    assert abs(decoded_seconds(data) - expected) < (0.12 if response_format == "mp3" else 0.01)
    if response_format == "wav":
        import wave

        assert np.array_equal(sf.read(io.BytesIO(data), dtype="int16")[0], sf.read(saved, dtype="int16")[0])
        with wave.open(io.BytesIO(data)) as reader:           # strict readers need the real sizes
            assert reader.getnframes() == sf.info(saved).frames


def test_streaming_response_arrives_in_pieces_and_matches_the_saved_file(api_app, narrator):
    client = client_for(api_app)
    with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="narrator", input=TEXT * 3, response_format="pcm",
            extra_body={"seed": 8, "stream": True}) as response:
        pieces = list(response.iter_bytes())
        request_id = response.headers["x-request-id"]
    assert len(pieces) > 1
    streamed = np.frombuffer(b"".join(pieces), dtype="<i2")
    assert np.array_equal(streamed, sf.read(saved_output(api_app, request_id), dtype="int16")[0])


def test_sse_stream_carries_base64_audio_then_done(api_app, narrator):
    with httpx.stream("POST", f"{api_app.url}/v1/audio/speech", headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": "tts-1", "voice": "narrator", "input": TEXT, "response_format": "pcm",
                            "stream_format": "sse", "seed": 3}, timeout=120) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    assert deltas and events[-1]["type"] == "speech.audio.done"
    audio = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    assert abs(len(audio) / 2 / 24000 - events[-1]["audio_seconds"]) < 0.001


def test_voices_are_created_listed_and_deleted(api_app):
    client = client_for(api_app)
    created = create_voice(client, "temporary")
    assert created.object == "audio.voice" and created.name == "temporary" and created.id.startswith("voice_")
    listed = client.get("/audio/voices", cast_to=object)
    assert "temporary" in [v["name"] for v in listed["data"]]
    deleted = client.audio.voices.delete(created.id)
    assert deleted.deleted and deleted.id == created.id
    assert "temporary" not in [v["name"] for v in client.get("/audio/voices", cast_to=object)["data"]]
    with pytest.raises(openai.NotFoundError):
        client.audio.voices.delete(created.id)


def test_models_list_the_engine(api_app):
    ids = [model.id for model in client_for(api_app).models.list()]
    assert ids[0] == "lite" and "tts-1" in ids


def test_a_wrong_or_missing_key_gets_401(api_app, narrator):
    with pytest.raises(openai.AuthenticationError) as caught:
        client_for(api_app, key="sk-wrong").audio.speech.create(model="tts-1", voice="narrator", input=TEXT)
    assert caught.value.status_code == 401 and caught.value.body["code"] == "invalid_api_key"
    assert httpx.get(f"{api_app.url}/v1/models", timeout=10).status_code == 401


def test_unknown_voice_and_bad_name_get_openai_errors_with_the_request_id(api_app, narrator):
    client = client_for(api_app)
    with pytest.raises(openai.NotFoundError) as caught:
        client.audio.speech.create(model="tts-1", voice="nobody", input=TEXT)
    error = caught.value
    assert set(error.body) == {"message", "type", "param", "code"} and error.body["param"] == "voice"
    assert "no saved voice 'nobody'" in error.body["message"] and "narrator" in error.body["message"]
    assert error.request_id and f"(request {error.request_id})" in error.body["message"]
    assert any("WARNING" in line and "refused" in line and "'nobody'" in line
               for line in request_log_lines(api_app, error.request_id))
    with pytest.raises(openai.BadRequestError) as caught:
        create_voice(client, "../../etc/passwd")
    assert "characters a name cannot hold" in caught.value.body["message"] and caught.value.body["param"] == "name"
    with pytest.raises(openai.ConflictError, match="taken"):
        create_voice(client, "Narrator")
    with pytest.raises(openai.BadRequestError, match="response_format"):
        client.audio.speech.create(model="tts-1", voice="narrator", input=TEXT, response_format="ogg")


def test_uploads_keep_the_prompt_limits(api_app, tmp_path):
    client = client_for(api_app)
    with pytest.raises(openai.BadRequestError, match="at least 2 s"):
        create_voice(client, "too short", prompt=audio_variants.cut(tmp_path, 1.0))
    big = tmp_path / "big.wav"
    sf.write(big, np.random.default_rng(0).uniform(-0.5, 0.5, 24000 * 30).astype(np.float32), 24000,
             subtype="FLOAT")                # ~2.9 MB, over this app's 1 MB --max-upload-mb
    with pytest.raises(openai.APIStatusError) as caught:
        create_voice(client, "too big", prompt=big)
    assert caught.value.status_code == 413
    assert "too short" not in str(client.get("/audio/voices", cast_to=object))


def test_v1_bodies_are_not_taken_as_file_payloads(api_app, narrator):
    """HttpGuard inspects Gradio's routes only; nothing in a /v1 body names a server file."""
    response = httpx.post(f"{api_app.url}/v1/audio/speech", headers={"Authorization": f"Bearer {KEY}"},
                          json={"model": "tts-1", "input": TEXT,
                                "voice": {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}}, timeout=60)
    assert response.status_code == 400 and response.json()["error"]["param"] == "voice"
    assert "Prompt audio must be a file uploaded" not in response.text


def test_instructions_select_instruct_mode(api_app, narrator):
    response = client_for(api_app).audio.speech.with_raw_response.create(
        model="tts-1", voice="narrator", input=TEXT, instructions="请用非常快的语速说", response_format="wav")
    assert response.content
    lines = request_log_lines(api_app, response.headers["x-request-id"])
    # /v1 asks for "auto"; the service decides instruct from the instruction and logs its decision
    assert any("accepted: instruct" in line for line in lines) and any("instruction: 请用非常快的语速说" in l for l in lines)


@pytest.mark.slow
def test_saved_voice_after_restart_speaks_like_the_original_upload(tmp_path):
    voices = str(tmp_path / "voices")
    (tmp_path / "first").mkdir()
    first = start_app(tmp_path / "first", "--engine", "lite", "--voices-dir", voices)
    try:
        upload = first.client().predict(text=TEXT, mode="zero_shot", prompt_wav=handle_file(str(ZERO_SHOT_PROMPT)),
                                        prompt_text=ZERO_SHOT_TRANSCRIPT, instruct_text="", seed=21, speed=1.0,
                                        stream=False, api_name="/synthesize")
        original = sf.read(next(first.outputs_dir.glob(Path(upload).name)), dtype="int16")[0]
        create_voice(openai.OpenAI(base_url=f"{first.url}/v1", api_key="unused", max_retries=0), "kept")
    finally:
        stop_app(first)
    (tmp_path / "second").mkdir()
    second = start_app(tmp_path / "second", "--engine", "lite", "--voices-dir", voices)
    try:
        client = openai.OpenAI(base_url=f"{second.url}/v1", api_key="unused", max_retries=0, timeout=120)
        response = client.audio.speech.with_raw_response.create(model="tts-1", voice="kept", input=TEXT,
                                                                response_format="wav", extra_body={"seed": 21})
        again = sf.read(io.BytesIO(response.content), dtype="int16")[0]
        lines = request_log_lines(second, response.headers["x-request-id"])
    finally:
        stop_app(second)
    assert np.array_equal(original, again)
    assert any("loaded from the voice library, not extracted" in line for line in lines), lines
    assert re.search(r"voice 'kept' \(id voice_[0-9a-f]+\)", "\n".join(lines))


def test_gradio_api_lists_only_public_endpoints_and_synthesize_takes_a_voice(api_app, narrator):
    client = api_app.client()
    info = client.view_api(return_format="dict", print_info=False)
    assert set(info["named_endpoints"]) == {"/synthesize"} and not info["unnamed_endpoints"]
    parameters = [p["parameter_name"] for p in info["named_endpoints"]["/synthesize"]["parameters"]]
    assert parameters[-1] == "voice"
    path = client.predict(text=TEXT, mode="cross_lingual", prompt_wav=None, prompt_text="", instruct_text="",
                          seed=2, speed=1.0, stream=False, normalize=True, voice="narrator", api_name="/synthesize")
    assert sf.info(path).duration > 1.0


def test_dialogue_route_returns_one_file_with_turns_in_order(api_app, narrator):
    response = httpx.post(f"{api_app.url}/v1/audio/dialogue", headers={"Authorization": f"Bearer {KEY}"},
                          json={"script": "[A] 你好。\n[B] 今天天气很好。", "voices": {"A": "narrator", "B": "narrator"},
                                "gap": 0.25, "seed": 1, "response_format": "wav"}, timeout=120)
    assert response.status_code == 200, response.text
    details = httpx.get(f"{api_app.url}/v1/audio/dialogue/{response.headers['x-dialogue-id']}",
                        headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    turns = details.json()["turns"]
    assert [t["speaker"] for t in turns] == ["A", "B"] and abs(turns[1]["start"] - turns[0]["end"] - 0.25) < 0.001
    assert abs(sf.info(io.BytesIO(response.content)).duration - turns[-1]["end"]) < 0.001
    bad = httpx.post(f"{api_app.url}/v1/audio/dialogue", headers={"Authorization": f"Bearer {KEY}"},
                     json={"script": "[A] 你好。", "voices": {"A": "ghost"}}, timeout=60)
    assert bad.status_code == 404 and "ghost" in bad.json()["error"]["message"]


def test_ui_offers_saved_voices_save_button_dialogue_and_history_tabs(api_app, narrator):
    import shutil
    import subprocess
    import tempfile

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None and os.environ.get("CI") != "true":      # in CI a missing browser is a failure
        pytest.skip("chromium not installed (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                              "--disable-background-networking", f"--user-data-dir={profile}",
                              "--virtual-time-budget=20000", "--dump-dom", api_app.url],
                             capture_output=True, text=True, timeout=120).stdout
    for label in ["已保存音色 Saved voice", "保存音色 Save voice", "音色名称 Voice name", "对话 Dialogue",
                  "历史 History"]:
        assert label in dom, f"'{label}' missing from the rendered page"


def test_with_only_a_login_the_api_takes_its_credentials(tmp_path):
    """--auth without --api-key: /v1 is not left open; HTTP Basic with the login's credentials works."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from cosyvoice.server.http_guard import CredentialGate
    from cosyvoice.server.openai_api import mount
    from cosyvoice.service.synthesis import ServiceConfig, SynthesisService
    from unit.test_service import ControlledEngine

    service = SynthesisService(ControlledEngine(), ServiceConfig(outputs_dir=tmp_path / "o", voices_dir=tmp_path / "v"))
    app = FastAPI()
    mount(app, service, CredentialGate(auth=("ann", "secret")))
    client = TestClient(app)
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", auth=("ann", "wrong")).status_code == 401
    assert client.get("/v1/models", auth=("ann", "secret")).json()["data"][0]["id"] == "controlled"
