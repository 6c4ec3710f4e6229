"""The WebUI's API through gradio_client, on the real app with the embedded engine."""
from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from gradio_client import handle_file

import audio_variants
from conftest import AUDIO, ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT, request_log_lines

SHORT_TEXT = "今天天气很好。"
LONG_TEXT = "今天天气很好，我们一起去公园散步吧。公园里有很多人在跑步，还有小朋友在放风筝。"


def synth(app, text, mode="zero_shot", prompt=ZERO_SHOT_PROMPT, prompt_text=ZERO_SHOT_TRANSCRIPT,
          instruct_text="", seed=7, speed=1.0, stream=False) -> Path:
    client = app.client()
    result = client.predict(text=text, mode=mode, prompt_wav=handle_file(str(prompt)) if prompt else None,
                            prompt_text=prompt_text, instruct_text=instruct_text, seed=seed, speed=speed,
                            stream=stream, api_name="/synthesize")
    return Path(result)


def saved_copy(app, returned: Path) -> Path:
    """The file under the app's outputs/ that the API returned (the client downloads a copy)."""
    matches = list(app.outputs_dir.glob(returned.name))
    assert matches, f"{returned.name} is not under {app.outputs_dir}"
    return matches[0]


def request_id_of(path: Path) -> str:
    match = re.fullmatch(r"output_\d{8}_\d{6}_[0-9a-f]{8}_([0-9a-f]+)\.wav", path.name)
    assert match, path.name
    return match.group(1)


def test_zero_shot_returns_complete_speech_in_proportion_to_text(lite_app):
    short = saved_copy(lite_app, synth(lite_app, SHORT_TEXT))
    long = saved_copy(lite_app, synth(lite_app, LONG_TEXT))
    for path in (short, long):
        info = sf.info(path)
        assert info.frames > 0 and info.samplerate == 24000
        data, _ = sf.read(path, dtype="float32")
        assert np.sqrt(np.mean(data**2)) > 0.01, "output is silent"
    ratio = sf.info(long).duration / sf.info(short).duration
    chars_ratio = len(LONG_TEXT) / len(SHORT_TEXT)
    assert 0.4 * chars_ratio < ratio < 1.6 * chars_ratio
    assert not list(lite_app.outputs_dir.glob("*.partial"))


@pytest.mark.parametrize("mode,extra", [("cross_lingual", {"prompt_text": ""}),
                                        ("instruct", {"prompt_text": "", "instruct_text": "请用非常快的语速说"})])
def test_cross_lingual_and_instruct(lite_app, mode, extra):
    path = saved_copy(lite_app, synth(lite_app, "Hello, this is a test of cross lingual cloning.", mode=mode,
                                      prompt=AUDIO / "cross_lingual_prompt.wav", **extra))
    data, rate = sf.read(path, dtype="float32")
    assert len(data) / rate > 1.0 and np.sqrt(np.mean(data**2)) > 0.01


def test_log_has_every_stage_in_order_ending_in_success(lite_app):
    path = synth(lite_app, LONG_TEXT)
    lines = request_log_lines(lite_app, request_id_of(path))
    stages = ["received zero_shot", "text:", "prompt audio:", "voice features ready", "piece 1/", "vocoded",
              "SUCCESS"]
    positions = []
    for stage in stages:
        found = [i for i, line in enumerate(lines) if stage in line]
        assert found, f"no '{stage}' line in {lines}"
        positions.append(found[0])
    assert positions == sorted(positions), lines
    assert "SUCCESS" in lines[-1] and "saved " in lines[-1] and "RTF" in lines[-1]
    for level in ("INFO", "SUCCESS"):
        assert any(f"| {level}" in line for line in lines)


def test_same_seed_same_samples(lite_app):
    a = sf.read(saved_copy(lite_app, synth(lite_app, SHORT_TEXT, seed=1234)))[0]
    b = sf.read(saved_copy(lite_app, synth(lite_app, SHORT_TEXT, seed=1234)))[0]
    assert np.array_equal(a, b)


def test_same_seed_same_samples_when_streaming(lite_app):
    a = sf.read(saved_copy(lite_app, synth(lite_app, LONG_TEXT, seed=5, stream=True)))[0]
    b = sf.read(saved_copy(lite_app, synth(lite_app, LONG_TEXT, seed=5, stream=True)))[0]
    assert len(a) > 24000 and np.array_equal(a, b)


def _bad_cases(tmp: Path):
    return [
        ("empty text", dict(text="   "), "empty"),
        ("missing prompt", dict(prompt=None), "prompt recording"),
        ("missing transcript", dict(prompt_text=""), "transcript"),
        ("1 s prompt", dict(prompt=audio_variants.cut(tmp, 1.0)), "at least 2 s"),
        ("6 kHz prompt", dict(prompt=audio_variants.resampled(tmp, 6000)), "6000 Hz"),
        ("text file as wav", dict(prompt=audio_variants.not_audio(tmp)), "could not be read as audio"),
        ("text over limit", dict(text="很" * 301), "limit is 300"),
        ("instruct without instruction", dict(mode="instruct", prompt_text=""), "instruction"),
        ("bad markup", dict(text="我[xx9]你"), "[xx9]"),
    ]


def test_bad_inputs_get_clear_messages_and_service_keeps_serving(lite_app, tmp_path):
    from gradio_client.exceptions import AppError

    for name, kwargs, expected in _bad_cases(tmp_path):
        args = dict(text=SHORT_TEXT) | kwargs
        with pytest.raises(AppError) as caught:
            synth(lite_app, **args)
        assert expected in str(caught.value), f"{name}: {caught.value}"
        assert "Traceback" not in str(caught.value)
        assert httpx.get(f"{lite_app.url}/health", timeout=5).status_code == 200, name
    log = lite_app.log_text()
    for expected in ("empty", "at least 2 s", "6000 Hz", "could not be read as audio", "limit is 300"):
        assert any("WARNING" in line and expected in line for line in log.splitlines()), expected
    assert synth(lite_app, SHORT_TEXT).exists()


@pytest.mark.parametrize("rate,channels,fmt,described", [(48000, 6, "wav", "48000 Hz, 6 ch mixed to mono"),
                                                         (44100, 2, "mp3", "44100 Hz, 2 ch mixed to mono")])
def test_multichannel_and_mp3_prompts_are_converted(lite_app, tmp_path, rate, channels, fmt, described):
    prompt = audio_variants.resampled(tmp_path, rate, channels, fmt)
    path = synth(lite_app, SHORT_TEXT, prompt=prompt)
    lines = request_log_lines(lite_app, request_id_of(path))
    assert any("prompt audio:" in line and described in line for line in lines), lines


def test_health_and_version_answer_fast_even_during_synthesis(lite_app):
    import threading

    worker = threading.Thread(target=synth, args=(lite_app, LONG_TEXT * 3), kwargs={"seed": 3})
    worker.start()
    time.sleep(0.5)
    busy_seen = 0
    while worker.is_alive():
        # A health check must not queue behind synthesis (latency figures: bench/health_latency.py).
        response = httpx.get(f"{lite_app.url}/health", timeout=2)
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "ok" and body["engine"] == "lite"
        assert {"uptime_s", "queue_depth", "busy_workers"} <= set(body)
        busy_seen = max(busy_seen, body["busy_workers"])
        time.sleep(0.1)
    worker.join()
    assert busy_seen >= 1, "/health never reported the running synthesis"
    version = httpx.get(f"{lite_app.url}/version", timeout=5).json()
    for key in ("version", "git_commit", "engine", "sample_rate", "build_time", "model"):
        assert key in version, version
    assert version["engine"] == "lite" and version["sample_rate"] == 24000


def test_what_the_engine_cannot_render_is_reported_not_ignored(lite_app):
    path = synth(lite_app, "今天天气很好[laughter]。", mode="instruct", prompt_text="",
                 instruct_text="请用四川话说")
    lines = request_log_lines(lite_app, request_id_of(path))
    warnings = [line for line in lines if "| WARNING" in line]
    assert any("四川话" in line and "plain Mandarin" in line for line in warnings), lines
    assert any("[laughter]" in line for line in warnings), lines


def test_normalization_can_be_switched_off_per_request(lite_app):
    client = lite_app.client()
    common = dict(mode="zero_shot", prompt_wav=handle_file(str(ZERO_SHOT_PROMPT)), prompt_text=ZERO_SHOT_TRANSCRIPT,
                  instruct_text="", seed=1, speed=1.0, stream=False, api_name="/synthesize")
    read_out = Path(client.predict(text="气温是-3.5℃。", normalize=True, **common))
    literal = Path(client.predict(text="气温是-3.5℃。", normalize=False, **common))
    # Read as words, -3.5℃ is 零下三点五摄氏度; left as written, espeak skips the sign and the unit.
    assert sf.info(read_out).duration > 1.3 * sf.info(literal).duration


def _metric(app, name: str, **labels) -> float:
    text = httpx.get(f"{app.url}/metrics", timeout=5).text
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{wanted}}}" if wanted else f"{name} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_requests_by_outcome(lite_app):
    from gradio_client.exceptions import AppError

    ok_before = _metric(lite_app, "cosyvoice_requests_total", mode="zero_shot", outcome="ok")
    refused_before = _metric(lite_app, "cosyvoice_requests_total", mode="zero_shot", outcome="refused")
    synth(lite_app, SHORT_TEXT)
    with pytest.raises(AppError):
        synth(lite_app, "")
    assert _metric(lite_app, "cosyvoice_requests_total", mode="zero_shot", outcome="ok") == ok_before + 1
    assert _metric(lite_app, "cosyvoice_requests_total", mode="zero_shot", outcome="refused") == refused_before + 1
    assert _metric(lite_app, "cosyvoice_audio_seconds_total") > 0
