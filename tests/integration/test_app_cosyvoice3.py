"""The neural engine end to end in the real app, on the tiny random-weight fixture (it speaks noise,
but every stage, log line, streaming chunk and saved file must work)."""
from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from gradio_client import handle_file

from conftest import AUDIO, FIXTURE, ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT, start_app, stop_app
from tiny_onnx import make_tiny_model_dir


@pytest.fixture(scope="module")
def cv3_app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cv3_app")
    model_dir = make_tiny_model_dir(FIXTURE, tmp / "model")
    app = start_app(tmp, "--engine", "cosyvoice3", "--model-dir", str(model_dir), "--max-text-chars", "200")
    yield app
    stop_app(app)


MODES = [
    ("zero_shot", dict(prompt=ZERO_SHOT_PROMPT, prompt_text=ZERO_SHOT_TRANSCRIPT, instruct_text="")),
    ("cross_lingual", dict(prompt=AUDIO / "cross_lingual_prompt.wav", prompt_text="", instruct_text="")),
    ("instruct", dict(prompt=ZERO_SHOT_PROMPT, prompt_text="", instruct_text="请用四川话说")),
]


def lines_for(app, request_id: str) -> list[str]:
    deadline = time.time() + 5
    while True:
        lines = [l for l in app.log_text().splitlines() if f"req={request_id} " in l]
        if any("SUCCESS" in l for l in lines) or time.time() > deadline:
            return lines
        time.sleep(0.2)


@pytest.mark.parametrize("mode,extra", MODES, ids=[m for m, _ in MODES])
def test_api_synthesis_in_every_mode(cv3_app, mode, extra):
    client = cv3_app.client()
    path = Path(client.predict(text="你好，世界。", mode=mode, prompt_wav=handle_file(str(extra["prompt"])),
                               prompt_text=extra["prompt_text"], instruct_text=extra["instruct_text"], seed=3,
                               speed=1.0, stream=False, api_name="/synthesize"))
    data, rate = sf.read(path, dtype="float32")
    assert rate == 24000 and len(data) > 0 and np.isfinite(data).all()
    request_id = re.search(r"_([0-9a-f]+)\.wav$", path.name).group(1)
    lines = lines_for(cv3_app, request_id)
    for stage in ("received", "text:", "prompt audio:", "voice features ready", "piece 1/1", "SUCCESS"):
        assert any(stage in l for l in lines), (stage, lines)
    assert httpx.get(f"{cv3_app.url}/version").json()["engine"] == "cosyvoice3"


@pytest.mark.parametrize("mode,extra", MODES, ids=[m for m, _ in MODES])
def test_ui_endpoint_streams_chunks_and_saves_the_file(cv3_app, mode, extra):
    client = cv3_app.client()
    job = client.submit(mode, "你好，世界。今天天气很好。", handle_file(str(extra["prompt"])), extra["prompt_text"],
                        extra["instruct_text"], 3, 1.0, True, True, "", api_name="/generate")
    outputs = job.outputs()
    job.result()
    audio_updates = [o for o in outputs if o[0] is not None]
    saved = [o[1] for o in outputs if o[1]]
    assert len(audio_updates) >= 2, f"expected several streamed chunks, got {len(audio_updates)}"
    assert saved and Path(saved[-1] if isinstance(saved[-1], str) else saved[-1]["path"]).exists()


def test_same_seed_same_audio_streaming_and_not(cv3_app):
    client = cv3_app.client()

    def run(stream: bool) -> np.ndarray:
        path = client.predict(text="你好，世界。", mode="zero_shot", prompt_wav=handle_file(str(ZERO_SHOT_PROMPT)),
                              prompt_text=ZERO_SHOT_TRANSCRIPT, instruct_text="", seed=11, speed=1.0,
                              stream=stream, api_name="/synthesize")
        return sf.read(path, dtype="float32")[0]

    for stream in (False, True):
        assert np.array_equal(run(stream), run(stream)), f"stream={stream}"
