"""Subtitles for single /v1/audio/speech requests: a cue per piece, timed from the audio actually sent.

Checked with real parsers (`srt`, `webvtt-py`) against the decoded audio: each cue starts where its
piece's sound starts, a written pause is a silent gap between two cues, the last cue ends at the end.
"""
from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf
import srt
import webvtt

from conftest import ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT, start_app, stop_app

# three pieces: a pause splits the first from the rest, and the rest is long enough to be cut in two
TEXT = ("今天天气很好，我们一起去公园散步吧。[pause:1.2]"
        "The weather is lovely today, so we are going for a long walk in the park after lunch. "
        "We will bring some bread for the ducks and a blanket to sit on by the lake until the sun goes down.")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("subtitles_app")
    running = start_app(tmp, "--engine", "lite", "--voices-dir", str(tmp / "voices"))
    client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="none", max_retries=0, timeout=120)
    with open(ZERO_SHOT_PROMPT, "rb") as audio:
        client.audio.voices.create(name="narrator", audio_sample=audio, consent="self",
                                   extra_body={"transcript": ZERO_SHOT_TRANSCRIPT})
    running.client = client
    yield running
    stop_app(running)


def speech(app, fmt: str, **extra):
    return app.client.audio.speech.with_raw_response.create(
        model="lite", voice="narrator", input=TEXT, response_format="wav", extra_body={"subtitles": fmt, "seed": 3,
                                                                                         **extra})


def seconds(t) -> float:
    return t.total_seconds() if hasattr(t, "total_seconds") else t


def check_against_audio(cues: list[tuple[float, float, str]], samples: np.ndarray, rate: int) -> None:
    duration = len(samples) / rate
    assert len(cues) >= 3, cues                                  # the pause and the long English text both cut
    assert "今天天气很好" in cues[0][2] and "pause" not in " ".join(c[2] for c in cues)
    assert abs(cues[-1][1] - duration) <= 0.002                  # the last cue ends with the audio
    for (start, end, _), (next_start, _, _) in zip(cues, cues[1:]):
        assert end <= next_start + 1e-3
    gap = cues[1][0] - cues[0][1]
    assert 1.19 <= gap <= 1.21                                   # the written pause, exactly, between two cues
    quiet = samples[int(cues[0][1] * rate) + 50: int(cues[1][0] * rate) - 50]
    assert np.abs(quiet).max() < 1e-3                            # ... and silent in the audio
    for start, end, _ in cues:                                   # every cue spans sound, not silence
        body = samples[int(start * rate): int(end * rate)]
        assert np.sqrt(np.mean(body ** 2)) > 0.01


def test_wav_response_names_subtitles_that_srt_parses_and_match_the_audio(app):
    response = speech(app, "srt")
    subtitles_id = response.headers["x-subtitles-id"]
    assert len(subtitles_id) < 120 and subtitles_id.startswith("output_")      # an id, never the subtitles
    samples, rate = sf.read(io.BytesIO(response.content), dtype="float32")
    got = httpx.get(f"{app.url}/v1/audio/subtitles/{subtitles_id}.srt")
    assert got.status_code == 200 and got.headers["content-type"].startswith("application/x-subrip")
    parsed = list(srt.parse(got.text))
    check_against_audio([(seconds(c.start), seconds(c.end), c.content) for c in parsed], samples, rate)
    assert [c.index for c in parsed] == list(range(1, len(parsed) + 1))


def test_vtt_of_the_same_result_parses_with_webvtt(app, tmp_path):
    response = speech(app, "vtt")
    samples, rate = sf.read(io.BytesIO(response.content), dtype="float32")
    got = httpx.get(f"{app.url}/v1/audio/subtitles/{response.headers['x-subtitles-id']}.vtt")
    assert got.status_code == 200 and got.headers["content-type"].startswith("text/vtt")
    path = tmp_path / "subs.vtt"
    path.write_text(got.text, encoding="utf-8")
    captions = webvtt.read(str(path))
    check_against_audio([(_vtt_s(c.start), _vtt_s(c.end), c.text) for c in captions], samples, rate)


def _vtt_s(stamp: str) -> float:
    hours, minutes, rest = stamp.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(rest)


def test_sse_stream_ends_with_a_subtitles_event_matching_the_streamed_audio(app):
    body = {"model": "lite", "voice": "narrator", "input": TEXT, "response_format": "pcm", "stream_format": "sse",
            "stream": True, "seed": 3, "subtitles": "srt"}
    events = []
    with httpx.stream("POST", f"{app.url}/v1/audio/speech", json=body, timeout=120) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    assert [e["type"] for e in events[-2:]] == ["speech.audio.done", "speech.subtitles"]
    pcm = b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta")
    samples = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768
    parsed = list(srt.parse(events[-1]["subtitles"]))
    check_against_audio([(seconds(c.start), seconds(c.end), c.content) for c in parsed], samples, 24000)
    # the same subtitles stay readable by id afterwards
    again = httpx.get(f"{app.url}/v1/audio/subtitles/{events[-1]['id']}.srt")
    assert again.text == events[-1]["subtitles"]


def test_without_subtitles_no_header_and_bad_requests_are_refused(app):
    plain = app.client.audio.speech.with_raw_response.create(model="lite", voice="narrator", input="你好。",
                                                              response_format="wav")
    assert "x-subtitles-id" not in plain.headers
    refused = httpx.post(f"{app.url}/v1/audio/speech", json={"model": "lite", "voice": "narrator", "input": "你好。",
                                                             "subtitles": "ass"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "subtitles"
    streamed = httpx.post(f"{app.url}/v1/audio/speech", json={"model": "lite", "voice": "narrator", "input": "你好。",
                                                              "stream": True, "subtitles": "srt"})
    assert streamed.status_code == 400 and "stream_format" in streamed.json()["error"]["message"]
    for name in ("output_nope.srt", "output_20260101_000000_deadbeef_gone.srt", "..passwd.srt", f"{'x' * 300}.vtt"):
        missing = httpx.get(f"{app.url}/v1/audio/subtitles/{name}")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "subtitles_not_found"
    subtitles_id = speech(app, "srt").headers["x-subtitles-id"]
    wrong_format = httpx.get(f"{app.url}/v1/audio/subtitles/{subtitles_id}.ass")
    assert wrong_format.status_code == 404
