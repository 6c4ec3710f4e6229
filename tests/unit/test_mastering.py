"""The output never clips: the limiter's ceiling, its transparency, its chunk joins, the loudness target,
and what the service saves and streams from the lite engine (README examples and loud texts)."""
from __future__ import annotations

import io

import av
import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from conftest import ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT
from cosyvoice.audio.encode import encode
from cosyvoice.engines.lite import LiteEngine
from cosyvoice.audio.mastering import Limiter, integrated_loudness, master, master_events
from cosyvoice.service.synthesis import Event, ServiceConfig, SynthesisRequest, SynthesisService

RATE = 24000
CEILING = 10 ** (-1 / 20)


def db(x: float) -> float:
    return float(20 * np.log10(max(x, 1e-12)))


def full_scale_runs(samples: np.ndarray) -> int:
    """Runs of two or more samples at or above 0.999: what a listener hears as clipping."""
    hot = np.concatenate([[0], (np.abs(samples) >= 0.999).astype(np.int8), [0]])
    edges = np.diff(hot)
    return int(np.sum(np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1) >= 2))


def hot_signals() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    t = np.arange(4 * RATE) / RATE
    swell = (np.sin(2 * np.pi * 220 * t) * (0.2 + 1.6 * np.abs(np.sin(2 * np.pi * 0.7 * t)))).astype(np.float32)
    bursts = (rng.standard_normal(len(t)) * np.repeat(rng.uniform(0.05, 0.9, len(t) // 2400 + 1), 2400)[: len(t)])
    clicks = np.zeros(len(t), np.float32)
    clicks[::3000] = 4.0
    return {"swell": swell, "bursts": bursts.astype(np.float32), "clicks": clicks,
            "near_nyquist": (1.3 * np.sin(2 * np.pi * (RATE / 4 + 7) * t)).astype(np.float32)}


@pytest.mark.parametrize("name", sorted(hot_signals()))
def test_hot_signal_is_brought_under_the_ceiling(name):
    x = hot_signals()[name]
    y = master(x, RATE)
    assert len(y) == len(x)
    assert np.abs(y).max() <= CEILING + 1e-6 and full_scale_runs(y) == 0
    assert db(np.abs(y).max()) >= -1.1                      # limited to the ceiling, not simply turned down
    true_peak = np.abs(resample_poly(y.astype(np.float64), 4, 1)).max()
    assert db(true_peak) <= -0.5                             # between samples too, within the codecs' margin


def test_limiter_leaves_audio_under_the_ceiling_untouched():
    t = np.arange(2 * RATE) / RATE
    x = (0.8 * np.sin(2 * np.pi * 180 * t) * np.sin(2 * np.pi * 0.5 * t)).astype(np.float32)
    np.testing.assert_allclose(master(x, RATE), x, atol=1e-6)


def test_gain_falls_smoothly_before_a_peak_and_recovers_after():
    t = np.arange(RATE) / RATE
    x = (0.5 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    x[RATE // 2] = 3.0                                       # one spike, 9.6 dB over the ceiling
    y = master(x, RATE)
    gain = np.divide(y, x, out=np.ones_like(y), where=np.abs(x) > 0.05)
    before = gain[RATE // 2 - 200: RATE // 2]
    assert np.all(np.diff(before[np.abs(x[RATE // 2 - 200: RATE // 2]) > 0.05]) <= 1e-6)   # only falls
    assert gain[: RATE // 2 - 300][np.abs(x[: RATE // 2 - 300]) > 0.05].min() > 0.999   # untouched well before
    assert gain[-RATE // 10:][np.abs(x[-RATE // 10:]) > 0.05].min() > 0.999          # recovered by the end
    # no step bigger than the signal's own between neighbouring samples plus the spike's share
    assert np.abs(np.diff(y)).max() < CEILING + 0.2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chunked_output_equals_whole_output_at_every_join(seed):
    x = hot_signals()["swell"] + hot_signals()["bursts"]
    whole = master(x, RATE)
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(1, len(x)), size=40, replace=False))
    limiter, parts = Limiter(RATE), []
    for piece in np.split(x, cuts):
        parts.append(limiter.process(piece))
    parts.append(limiter.flush())
    joined = np.concatenate(parts)
    assert len(joined) == len(x)
    assert np.abs(joined - whole).max() < 1e-5              # no gap, no repeat, no click at a join
    steps = np.abs(np.diff(joined))
    joins = np.cumsum([len(p) for p in parts[:-1]]) - 1
    joins = joins[(joins >= 0) & (joins < len(steps))]
    assert steps[joins].max() <= steps.max()                 # joins are no jumpier than the audio itself


def _events(chunks):
    for i, chunk in enumerate(chunks):
        yield Event(progress=(i / len(chunks), f"chunk {i}"))
        yield Event(chunk=chunk)


@pytest.mark.parametrize("target", [-16.0, -23.0])
def test_loudness_target_is_met_whole_and_streamed(target):
    x = hot_signals()["bursts"] * 0.3
    x = np.concatenate([x, x[::-1]])
    whole = master(x, RATE, target)
    assert abs(integrated_loudness(whole, RATE) - target) < 1.0 and np.abs(whole).max() <= CEILING + 1e-6
    chunks = np.array_split(x, 37)
    streamed = [e for e in master_events(_events(chunks), RATE, stream=True, target_lufs=target)]
    audio = np.concatenate([e.chunk for e in streamed if e.chunk is not None])
    assert len(audio) == len(x) and sum(e.progress is not None for e in streamed) == len(chunks)
    assert abs(integrated_loudness(audio, RATE) - target) < 1.0 and np.abs(audio).max() <= CEILING + 1e-6


def test_events_without_target_are_the_same_streamed_or_not():
    x = hot_signals()["swell"]
    chunks = np.array_split(x, 23)
    streamed = np.concatenate([e.chunk for e in master_events(_events(chunks), RATE, stream=True)
                               if e.chunk is not None])
    batch = np.concatenate([e.chunk for e in master_events(_events(chunks), RATE, stream=False)
                            if e.chunk is not None])
    np.testing.assert_array_equal(streamed, batch)
    np.testing.assert_allclose(streamed, master(x, RATE), atol=1e-5)


# ---- what the service saves and streams from a real engine ----------------------------------------

LOUD_TEXTS = ["今天天气很好。", "你好。", "啊！快跑！！着火了！！！", "Stop right there! WATCH OUT!"]


@pytest.fixture(scope="module")
def lite_service(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mastering")
    return SynthesisService(LiteEngine(sample_rate=RATE), ServiceConfig(outputs_dir=tmp / "outputs"))


def _decoded(samples: np.ndarray, fmt: str) -> np.ndarray:
    with av.open(io.BytesIO(encode(samples, RATE, fmt))) as container:
        return np.concatenate([frame.to_ndarray().reshape(-1) for frame in container.decode(audio=0)])


@pytest.mark.parametrize("text", LOUD_TEXTS)
def test_saved_and_streamed_lite_outputs_never_clip(lite_service, text):
    request = dict(text=text, prompt_wav=str(ZERO_SHOT_PROMPT), prompt_text=ZERO_SHOT_TRANSCRIPT, seed=1)
    streamed, result = [], None
    for event in lite_service.run(SynthesisRequest(stream=True, **request)):
        if event.chunk is not None:
            streamed.append(event.chunk)
        result = event.result or result
    saved, rate = sf.read(result.path, dtype="float32")
    assert rate == RATE and full_scale_runs(saved) == 0 and np.abs(saved).max() < 0.999
    assert db(np.abs(saved).max()) <= -1.0 + 0.01
    streamed_audio = np.concatenate(streamed)
    assert len(streamed_audio) == len(saved)
    np.testing.assert_allclose(streamed_audio, saved, atol=1 / 32768 + 1e-6)   # what streamed is what was saved
    batch = lite_service.synthesize(SynthesisRequest(**request))
    np.testing.assert_array_equal(sf.read(batch.path, dtype="float32")[0], saved)
    for fmt in ("mp3", "aac", "opus"):
        decoded = _decoded(saved, fmt)
        assert np.abs(decoded).max() < 0.999, f"{fmt} decodes with overs"


def test_loudness_flag_brings_lite_output_to_the_target(tmp_path):
    service = SynthesisService(LiteEngine(sample_rate=RATE), ServiceConfig(outputs_dir=tmp_path, loudness_lufs=-20.0))
    result = service.synthesize(SynthesisRequest(text="今天天气很好，我们一起去公园散步吧。", prompt_wav=str(ZERO_SHOT_PROMPT),
                                                 prompt_text=ZERO_SHOT_TRANSCRIPT, seed=1))
    saved, _ = sf.read(result.path, dtype="float32")
    assert abs(integrated_loudness(saved, RATE) + 20.0) < 1.0 and np.abs(saved).max() <= CEILING + 1e-4


def test_cosyvoice3_outputs_pass_the_same_limiter(tmp_path):
    """The other engine (tiny random-weight fixture) goes through the same stage: streamed equals saved,
    nothing goes over the ceiling."""
    from tiny_onnx import make_tiny_model_dir
    from conftest import FIXTURE
    from cosyvoice.engines.cosyvoice3 import CosyVoice3Engine

    engine = CosyVoice3Engine(make_tiny_model_dir(FIXTURE, tmp_path / "model"), device="cpu", precision="fp32")
    service = SynthesisService(engine, ServiceConfig(outputs_dir=tmp_path / "outputs"))
    request = dict(text="你好，今天天气很好。", prompt_wav=str(ZERO_SHOT_PROMPT), prompt_text=ZERO_SHOT_TRANSCRIPT,
                   seed=8)
    streamed, result = [], None
    for event in service.run(SynthesisRequest(stream=True, **request)):
        if event.chunk is not None:
            streamed.append(event.chunk)
        result = event.result or result
    saved, rate = sf.read(result.path, dtype="float32")
    assert rate == engine.sample_rate and np.abs(saved).max() <= CEILING + 1e-4 and full_scale_runs(saved) == 0
    np.testing.assert_allclose(np.concatenate(streamed), saved, atol=1 / 32768 + 1e-6)
