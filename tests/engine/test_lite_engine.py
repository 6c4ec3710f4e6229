"""The lite engine end to end: pitch and timbre moved toward the prompt, styles, honesty."""
from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf

from cosyvoice.engines.base import PromptAudio, Style
from cosyvoice.engines.lite import LiteEngine

from conftest import AUDIO
PROMPTS = ["zero_shot_prompt", "cross_lingual_prompt", "f5_basic_ref_en", "f5_basic_ref_zh"]
ZH = "今天天气很好，我们一起去公园散步吧。"
EN = "The weather is nice today, so we will walk in the park."
PLAIN = Style(mode="zero_shot")


def load(name: str) -> PromptAudio:
    samples, rate = sf.read(str(AUDIO / f"{name}.wav"), dtype="float32", always_2d=True)
    samples = samples.mean(axis=1)
    return PromptAudio(samples, rate, hashlib.sha1(samples.tobytes()).hexdigest())


def speak(engine, text, voice, style=PLAIN, seed=0, stream=False):
    chunks = list(engine.synthesize(text, voice, style, seed, lambda p: None, stream=stream))
    return np.concatenate(chunks)


def median_f0(y: np.ndarray, rate: int) -> float:
    # YIN from librosa over the louder half of the frames: a tracker independent of the engine's WORLD
    y16 = librosa.resample(y.astype(np.float32), orig_sr=rate, target_sr=16000)
    f0 = librosa.yin(y16, fmin=60, fmax=500, sr=16000, frame_length=1024, hop_length=160)
    rms = librosa.feature.rms(y=y16, frame_length=1024, hop_length=160)[0][: len(f0)]
    return float(np.median(f0[rms > np.percentile(rms, 50)]))


def periodicity(y: np.ndarray, rate: int) -> float:
    """Median over the louder frames of the best normalised autocorrelation at 2.5-16 ms lags."""
    frames = librosa.util.frame(y, frame_length=1024, hop_length=480).T
    frames = frames[np.sqrt((frames ** 2).mean(axis=1)) > np.percentile(np.sqrt((frames ** 2).mean(axis=1)), 50)]
    lo, hi = int(0.0025 * rate), int(0.016 * rate)
    best = []
    for f in frames:
        f = f - f.mean()
        ac = np.correlate(f, f, mode="full")[len(f) - 1:]
        best.append(ac[lo:hi].max() / (ac[0] + 1e-12))
    return float(np.median(best))


def mean_log_mel(y: np.ndarray, rate: int) -> np.ndarray:
    """Level-free average log-mel spectrum over the louder frames."""
    y16 = librosa.resample(y.astype(np.float32), orig_sr=rate, target_sr=16000)
    mel = librosa.feature.melspectrogram(y=y16, sr=16000, n_fft=512, hop_length=160, n_mels=40, fmax=7000)
    log_mel = np.log(mel + 1e-10)
    energy = log_mel.mean(axis=0)
    loud = log_mel[:, energy > np.percentile(energy, 40)]
    avg = loud.mean(axis=1)
    return avg - avg.mean()


@pytest.fixture(scope="module")
def engine() -> LiteEngine:
    return LiteEngine(sample_rate=24000)


@pytest.fixture(scope="module")
def voices(engine):
    return {name: engine.prepare_voice(load(name), None) for name in PROMPTS}


@pytest.mark.parametrize("name", PROMPTS)
def test_output_pitch_matches_prompt(engine, voices, name):
    prompt = load(name)
    target = median_f0(prompt.samples, prompt.sample_rate)
    out = speak(engine, ZH, voices[name])
    assert abs(median_f0(out, engine.sample_rate) / target - 1) < 0.10


@pytest.mark.parametrize("name", PROMPTS)
def test_average_spectrum_closer_to_prompt_than_plain_espeak(engine, voices, name):
    prompt = load(name)
    target = mean_log_mel(prompt.samples, prompt.sample_rate)
    matched = np.concatenate([speak(engine, ZH, voices[name]), speak(engine, EN, voices[name])])
    plain = np.concatenate([engine.synthesize_plain(ZH), engine.synthesize_plain(EN)])
    d_matched = np.sqrt(np.mean((mean_log_mel(matched, engine.sample_rate) - target) ** 2))
    d_plain = np.sqrt(np.mean((mean_log_mel(plain, engine.sample_rate) - target) ** 2))
    assert d_matched < d_plain


def test_two_prompts_give_different_voices(engine, voices):
    a = speak(engine, ZH, voices["zero_shot_prompt"])
    b = speak(engine, ZH, voices["f5_basic_ref_en"])
    assert median_f0(a, engine.sample_rate) > 1.6 * median_f0(b, engine.sample_rate)


def test_same_request_same_samples_streaming_or_not(engine, voices):
    voice = voices["zero_shot_prompt"]
    text = "重庆是[ch][óng]庆。[breath] I [M][AY0][N][UW1][T] it."
    whole = speak(engine, text, voice, seed=7)
    streamed = list(engine.synthesize(text, voice, PLAIN, 7, lambda p: None, stream=True))
    assert len(streamed) > 1
    assert np.array_equal(whole, np.concatenate(streamed))
    assert np.array_equal(whole, speak(engine, text, voice, seed=7))
    assert whole.dtype == np.float32 and np.abs(whole).max() <= 1.0


def test_parameters_do_not_leak_between_calls(engine, voices):
    voice = voices["cross_lingual_prompt"]
    before = speak(engine, ZH, voice)
    speak(engine, ZH, voice, style=Style(mode="instruct", instruct_text="请用尽可能快地语速说一句话。"))
    assert np.array_equal(before, speak(engine, ZH, voice))


def test_concurrent_calls_are_serialised_safely(engine, voices):
    voice = voices["f5_basic_ref_zh"]
    expected = speak(engine, ZH, voice)
    results: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: results.append(speak(engine, ZH, voice))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(r, expected) for r in results)


def test_speed_changes_duration(engine, voices):
    voice = voices["cross_lingual_prompt"]
    normal = len(speak(engine, ZH, voice))
    fast = len(speak(engine, ZH, voice, style=Style(mode="zero_shot", speed=1.5)))
    slow = len(speak(engine, ZH, voice, style=Style(mode="zero_shot", speed=0.7)))
    assert fast < 0.8 * normal < normal < 0.8 * slow


@pytest.mark.parametrize("instruction,check", [
    ("Please say a sentence as loudly as possible.", "louder"),
    ("Please say a sentence in a very soft voice.", "softer"),
    ("请用尽可能快地语速说一句话。", "shorter"),
    ("请用尽可能慢地语速说一句话。", "longer"),
    ("请用更高的音调说", "higher"),
    ("speak in a deeper voice", "lower"),
    ("请非常伤心地说一句话。", "lower"),
])
def test_instruct_styles_are_rendered(engine, voices, instruction, check):
    voice = voices["cross_lingual_prompt"]
    base = speak(engine, ZH, voice)
    styled = speak(engine, ZH, voice, style=Style(mode="instruct", instruct_text=instruction))
    assert engine.style_notices(Style(mode="instruct", instruct_text=instruction)) == []
    rms = lambda y: float(np.sqrt(np.mean(y ** 2)))  # noqa: E731
    if check == "louder":
        assert rms(styled) > 1.5 * rms(base)
    elif check == "softer":
        assert rms(styled) < 0.7 * rms(base)
    elif check == "shorter":
        assert len(styled) < 0.8 * len(base)
    elif check == "longer":
        assert len(styled) > 1.2 * len(base)
    elif check == "higher":
        assert median_f0(styled, 24000) > 1.07 * median_f0(base, 24000)
    elif check == "lower":
        assert median_f0(styled, 24000) < 0.95 * median_f0(base, 24000)


def test_whisper_has_no_voiced_pitch(engine, voices):
    voice = voices["zero_shot_prompt"]
    y = speak(engine, ZH, voice, style=Style(mode="instruct", instruct_text="请用耳语的方式轻声说一句话。"))
    assert periodicity(y, 24000) < 0.3 < 0.6 < periodicity(speak(engine, ZH, voice), 24000)


@pytest.mark.parametrize("instruction,named", [
    ("You are a helpful assistant. 请用四川话表达。<|endofprompt|>", "四川话"),
    ("请带着笑声说", "笑声"),
    ("我想体验一下小猪佩奇风格，可以吗？", "小猪佩奇"),
    ("Say it in Peppa Pig style", "Peppa Pig"),
])
def test_unsupported_instructions_get_a_notice(engine, instruction, named):
    notices = engine.style_notices(Style(mode="instruct", instruct_text=instruction))
    assert len(notices) == 1
    assert notices[0].startswith("the lite engine cannot do") and named in notices[0]


def test_dialect_notice_says_plain_mandarin(engine):
    notices = engine.style_notices(Style(mode="instruct", instruct_text="请用上海话表达。"))
    assert notices == ["the lite engine cannot do 上海话; synthesised in plain Mandarin"]


def test_unrendered_tag_is_reported_not_hidden(engine, voices):
    messages = []
    chunks = list(engine.synthesize("你好[laughter]，再见。", voices["zero_shot_prompt"], PLAIN, 0,
                                    lambda p: messages.append(p.message)))
    assert np.concatenate(chunks).size > 0
    assert any("cannot render [laughter]" in m for m in messages)


def test_version_and_capabilities_name_the_engine(engine):
    assert engine.name == "lite"
    info = engine.version_info()
    assert info["engine"] == "lite" and "neural engine" in info["note"]
    assert any("download" in notice and "approximates" in notice for notice in engine.startup_notices())


def test_prompt_without_voice_is_refused(engine):
    from cosyvoice.errors import UserInputError

    rng = np.random.default_rng(0)
    noise = (0.01 * rng.standard_normal(16000 * 3)).astype(np.float32)
    with pytest.raises(UserInputError):
        engine.prepare_voice(PromptAudio(noise, 16000, "noise"), None)


def test_same_seed_gives_identical_samples_across_processes():
    """Not just within one process: a restarted server must repeat its audio for the same seed."""
    import subprocess
    import sys

    script = ("import hashlib; from cosyvoice.engines.lite import espeak as E; "
              "out = E.speak('今天天气很好，我们一起去公园散步吧。', E.EspeakParams(voice='cmn'), seed=3); "
              "out2 = E.speak('今天天气很好，我们一起去公园散步吧。', E.EspeakParams(voice='cmn'), seed=3); "
              "assert (out.samples == out2.samples).all(); print(hashlib.sha1(out.samples.tobytes()).hexdigest())")
    root = Path(__file__).resolve().parents[2]
    digests = {subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip() for _ in range(2)}
    assert len(digests) == 1
