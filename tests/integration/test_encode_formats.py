"""Every response format is a file that ordinary readers take: soundfile (libsndfile), ffmpeg's own
probe and PyAV agree on its length, flac's STREAMINFO holds the real sample count, lossy formats
decode without overs. Checked on the encoder alone and through the real /v1 route; browser and phone
recordings (webm, m4a) are accepted as voices by the API and as prompts by the Gradio API."""
from __future__ import annotations

import io
import re
import subprocess

import av
import imageio_ffmpeg
import numpy as np
import openai
import pytest
import soundfile as sf

import audio_variants
from conftest import ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT, start_app, stop_app
from cosyvoice.audio.encode import FORMATS, StreamEncoder, encode
from cosyvoice.audio.mastering import master

RATE = 24000
KEY = "sk-test-formats"
# formats libsndfile reads itself (mp3 since libsndfile 1.1, ogg opus since 1.0.29); aac only via PyAV
SOUNDFILE_READS = ("wav", "flac", "mp3", "opus")
# decoded length may differ by the codec's padding and priming: at most this many seconds
SLACK_S = {"wav": 0.0, "flac": 0.0, "pcm": 0.0, "mp3": 0.12, "opus": 0.03, "aac": 0.12}


def speech_like(seconds: float = 2.7) -> np.ndarray:
    rng = np.random.default_rng(5)
    t = np.arange(int(seconds * RATE)) / RATE
    voiced = np.sin(2 * np.pi * 140 * t) + 0.5 * np.sin(2 * np.pi * 420 * t) + 0.2 * rng.standard_normal(len(t))
    return master((1.4 * voiced * np.abs(np.sin(2 * np.pi * 2.5 * t))).astype(np.float32), RATE)


def ffmpeg_duration(data: bytes, suffix: str, tmp_path) -> float | None:
    """The duration ffmpeg reads from the container header (None when it says N/A)."""
    path = tmp_path / f"probe.{suffix}"
    path.write_bytes(data)
    probe = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)],
                           capture_output=True, text=True)
    found = re.search(r"Duration: (\d+):(\d+):([\d.]+)", probe.stderr)
    if not found:
        return None
    hours, minutes, seconds = found.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def pyav_decode(data: bytes) -> tuple[np.ndarray, int]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        frames = [f.to_ndarray().reshape(-1) for f in container.decode(stream)]
        return np.concatenate(frames), stream.codec_context.sample_rate


def streamed(samples: np.ndarray, fmt: str, pieces: int = 9) -> bytes:
    encoder = StreamEncoder(fmt, RATE)
    return b"".join(encoder.feed(p) for p in np.array_split(samples, pieces)) + encoder.finish()


def check_file(data: bytes, fmt: str, samples: np.ndarray, tmp_path) -> None:
    seconds = len(samples) / RATE
    if fmt == "pcm":
        decoded = np.frombuffer(data, "<i2").astype(np.float32) / 32768
        assert len(decoded) == len(samples) and np.abs(decoded - samples).max() < 1 / 16384
        return
    if fmt in SOUNDFILE_READS:
        info = sf.info(io.BytesIO(data))
        decoded, rate = sf.read(io.BytesIO(data), dtype="float32")
        assert abs(len(decoded) / rate - seconds) <= SLACK_S[fmt] + 1e-9, fmt
        assert abs(info.frames / info.samplerate - seconds) <= SLACK_S[fmt] + 1e-9, fmt
    else:
        decoded, rate = pyav_decode(data)
        assert abs(len(decoded) / rate - seconds) <= SLACK_S[fmt], fmt
    assert np.abs(decoded).max() < 0.999, f"{fmt} decodes with overs"
    if fmt in ("wav", "flac"):
        assert np.abs(decoded - samples).max() < 1 / 16384          # lossless: the same samples
    probed = ffmpeg_duration(data, {"opus": "ogg", "aac": "aac"}.get(fmt, fmt), tmp_path)
    if fmt in ("wav", "flac"):
        assert probed is not None and abs(probed - seconds) < 0.011, (fmt, probed)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_reads_back_whole_and_streamed(fmt, tmp_path):
    samples = speech_like()
    check_file(encode(samples, RATE, fmt), fmt, samples, tmp_path)
    if fmt != "wav":          # a streamed wav has an open-ended header by design (tested in test_openai_api)
        check_file(streamed(samples, fmt), fmt, samples, tmp_path)


def test_flac_streaminfo_has_the_real_sample_count():
    samples = speech_like(1.3)
    for data in (encode(samples, RATE, "flac"), streamed(samples, "flac", pieces=31)):
        assert data[:4] == b"fLaC"
        block = data[8:8 + 34]                      # STREAMINFO, the first metadata block
        total = int.from_bytes(block[13:18], "big") & ((1 << 36) - 1)
        assert total == len(samples)
        assert sf.info(io.BytesIO(data)).frames == len(samples)


# ---- through the real app -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def formats_app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("formats_app")
    app = start_app(tmp, "--engine", "lite", "--api-key", KEY, "--voices-dir", str(tmp / "voices"))
    app.tmp = tmp
    yield app
    stop_app(app)


def client_for(app) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{app.url}/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def webm_voice(formats_app, tmp_path_factory):
    """A voice made from a browser recording (webm/opus) through the official client."""
    recording = audio_variants.encoded(tmp_path_factory.mktemp("webm"), "webm")
    with open(recording, "rb") as audio:
        return client_for(formats_app).audio.voices.create(
            name="browser", audio_sample=audio, consent="self", extra_body={"transcript": ZERO_SHOT_TRANSCRIPT})


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("stream", [False, True])
def test_speech_route_answers_every_format_readably(formats_app, webm_voice, fmt, stream, tmp_path):
    response = client_for(formats_app).audio.speech.with_raw_response.create(
        model="tts-1", voice="browser", input="今天天气很好。", response_format=fmt,
        extra_body={"seed": 2, "stream": stream})
    [saved] = formats_app.outputs_dir.glob(f"output_*_{response.headers['x-request-id']}.wav")
    samples, rate = sf.read(saved, dtype="float32")
    assert rate == RATE and np.abs(samples).max() < 0.999
    if fmt == "wav" and stream:
        decoded = np.frombuffer(response.content[44:], "<i2")
        assert len(decoded) == len(samples)
        return
    check_file(response.content, fmt, samples, tmp_path)


@pytest.mark.parametrize("kind", ["webm", "m4a"])
def test_gradio_api_takes_browser_and_phone_recordings(formats_app, kind, tmp_path):
    from gradio_client import Client, handle_file

    recording = audio_variants.encoded(tmp_path, kind)
    client = Client(formats_app.url, verbose=False)
    result = client.predict(text="你好。", mode="zero_shot", prompt_wav=handle_file(str(recording)),
                            prompt_text=ZERO_SHOT_TRANSCRIPT, instruct_text="", seed=1, speed=1.0, stream=False,
                            api_name="/synthesize")
    path = result[0] if isinstance(result, (list, tuple)) else result
    samples, _ = sf.read(path, dtype="float32")
    assert len(samples) > RATE * 0.3 and np.abs(samples).max() < 0.999
