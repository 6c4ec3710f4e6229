"""CosyVoice3Engine end to end on the tiny fixture (random weights, tiny onnx stand-ins)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from cosyvoice.audio.prompt import load_prompt_audio
from cosyvoice.engines.base import Style
from cosyvoice.engines.cosyvoice3 import CosyVoice3Engine
from tiny_onnx import make_tiny_model_dir
from cosyvoice.errors import EngineError, ModelDirError

from conftest import AUDIO, FIXTURE, ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT

torch.set_num_threads(2)

TEXT = "你好，今天天气很好。"
SYSTEM = "You are a helpful assistant."
EOP = "<|endofprompt|>"
INSTRUCT = "请用四川话表达。"


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> CosyVoice3Engine:
    model_dir = make_tiny_model_dir(FIXTURE, tmp_path_factory.mktemp("cv3") / "model")
    return CosyVoice3Engine(model_dir, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def voice(engine):
    return engine.prepare_voice(load_prompt_audio(ZERO_SHOT_PROMPT).audio, ZERO_SHOT_TRANSCRIPT)


# Seeds for which the tiny random LLM stops early (short, cheap audio), per mode, and one that runs
# long enough in instruct mode to give two streaming chunks before the final one.
SHORT_SEED = {"zero_shot": 8, "cross_lingual": 4, "instruct": 6}
LONG_SEED = 7
_first_results: dict = {}


def synth(engine, voice, mode="zero_shot", stream=False, seed=None, instruct=None, progress=None, text=TEXT):
    seed = SHORT_SEED[mode] if seed is None else seed
    instruct = (INSTRUCT if mode == "instruct" else "") if instruct is None else instruct
    report = progress.append if progress is not None else (lambda p: None)
    return list(engine.synthesize(text, voice, Style(mode, instruct_text=instruct), seed, report, stream=stream))


def first_result(engine, voice, mode, stream, seed=None):
    """The first rendering of (mode, stream, seed) in this module; later runs are compared to it."""
    key = (mode, stream, seed)
    if key not in _first_results:
        _first_results[key] = synth(engine, voice, mode, stream, seed)
    return _first_results[key]


class Captured(Exception):
    pass


def captured_inputs(engine, monkeypatch, text, voice, style):
    """What the engine hands the synthesis core, without running it."""
    seen = []

    def record(inputs, **kwargs):
        seen.append(inputs)
        raise Captured
    monkeypatch.setattr(engine.model, "speech_tokens", record)
    with pytest.raises(Captured):
        list(engine.synthesize(text, voice, style, 1, lambda p: None))
    return seen[0]


def ids(engine, text):
    return engine.tokenizer.encode(text)


# -- voice preparation -------------------------------------------------------------------------------


def test_prepared_voice_has_two_mel_frames_per_prompt_token(voice):
    feats = voice.features
    seconds = feats.seconds
    assert feats.embedding.shape == (1, 192)
    assert feats.prompt_mel.shape[0] == 1 and feats.prompt_mel.shape[2] == 80
    assert feats.prompt_mel.shape[1] == 2 * feats.speech_tokens.shape[1]
    # 25 tokens per second of prompt, give or take the rounding of both feature rates
    assert abs(feats.speech_tokens.shape[1] - 25 * seconds) <= 2


def test_voice_from_a_22khz_recording(engine):
    audio = load_prompt_audio(AUDIO / "cross_lingual_prompt.wav").audio
    assert audio.sample_rate != 24000 and audio.sample_rate != 16000
    feats = engine.prepare_voice(audio, None).features
    assert abs(feats.speech_tokens.shape[1] - 25 * audio.seconds) <= 2
    assert torch.isfinite(feats.prompt_mel).all() and torch.isfinite(feats.embedding).all()


# -- what the LLM is given per mode ----------------------------------------------------------------------


def test_zero_shot_prompt_text_gets_the_system_prefix(engine, voice, monkeypatch):
    inputs = captured_inputs(engine, monkeypatch, TEXT, voice, Style("zero_shot"))
    assert inputs.prompt_text_ids[0].tolist() == ids(engine, SYSTEM + EOP + ZERO_SHOT_TRANSCRIPT)
    assert inputs.text_ids[0].tolist() == ids(engine, TEXT)
    assert torch.equal(inputs.llm_prompt_tokens, voice.features.speech_tokens)
    assert torch.equal(inputs.flow_prompt_tokens, voice.features.speech_tokens)


@pytest.mark.parametrize("own", [SYSTEM + EOP + ZERO_SHOT_TRANSCRIPT, "Speak warmly." + EOP + ZERO_SHOT_TRANSCRIPT])
def test_zero_shot_prompt_text_with_users_own_endofprompt_is_kept(engine, voice, monkeypatch, own):
    from cosyvoice.engines.base import Voice
    own_voice = Voice(own, voice.features)
    inputs = captured_inputs(engine, monkeypatch, TEXT, own_voice, Style("zero_shot"))
    assert inputs.prompt_text_ids[0].tolist() == ids(engine, own)


def test_cross_lingual_drops_the_llm_prompt_but_keeps_the_voice(engine, voice, monkeypatch):
    inputs = captured_inputs(engine, monkeypatch, TEXT, voice, Style("cross_lingual"))
    assert inputs.prompt_text_ids.shape[1] == 0
    assert inputs.llm_prompt_tokens.shape[1] == 0
    assert inputs.text_ids[0].tolist() == ids(engine, SYSTEM + EOP + TEXT)
    assert torch.equal(inputs.flow_prompt_tokens, voice.features.speech_tokens)
    assert torch.equal(inputs.prompt_mel, voice.features.prompt_mel)


@pytest.mark.parametrize("instruction", [INSTRUCT, f"{SYSTEM} {INSTRUCT}{EOP}"])
def test_instruct_prompt_is_the_official_form(engine, voice, monkeypatch, instruction):
    inputs = captured_inputs(engine, monkeypatch, TEXT, voice, Style("instruct", instruct_text=instruction))
    assert inputs.prompt_text_ids[0].tolist() == ids(engine, f"{SYSTEM} {INSTRUCT}{EOP}")
    assert inputs.llm_prompt_tokens.shape[1] == 0
    assert inputs.text_ids[0].tolist() == ids(engine, TEXT)
    assert torch.equal(inputs.flow_prompt_tokens, voice.features.speech_tokens)


# -- synthesis ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["zero_shot", "cross_lingual", "instruct"])
def test_every_mode_gives_finite_audio_of_plausible_length(engine, voice, mode):
    progress: list = []
    whole = synth(engine, voice, mode, stream=False, progress=progress)
    _first_results.setdefault((mode, False, None), whole)
    streamed = first_result(engine, voice, mode, stream=True)
    assert len(whole) == 1
    for audio in (whole[0], np.concatenate(streamed)):
        assert audio.dtype == np.float32 and audio.ndim == 1
        assert np.isfinite(audio).all() and np.abs(audio).max() <= 1.0
        # whole speech tokens of 2 mel frames x 480 samples; at most 20 tokens per text id (25 tokens/s)
        assert len(audio) > 0 and len(audio) % 960 == 0
        assert len(audio) / engine.sample_rate <= 20 * len(ids(engine, TEXT)) / 25 + 0.1
    # the same tokens (same seed) render to the same duration, streamed or not
    assert len(np.concatenate(streamed)) == len(whole[0])
    messages = [p.message for p in progress]
    assert any(m.startswith("speech tokens ") for m in messages)
    assert messages[-1].startswith("vocoded")


def test_same_seed_same_audio_and_global_rng_untouched(engine, voice):
    first = first_result(engine, voice, "cross_lingual", stream=False)
    first_streamed = first_result(engine, voice, "cross_lingual", stream=True)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    again = synth(engine, voice, "cross_lingual")
    again_streamed = synth(engine, voice, "cross_lingual", stream=True)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert np.array_equal(again[0], first[0])
    assert [len(x) for x in again_streamed] == [len(x) for x in first_streamed]
    assert all(np.array_equal(x, y) for x, y in zip(again_streamed, first_streamed))
    other = synth(engine, voice, "cross_lingual", seed=SHORT_SEED["cross_lingual"] + 4)
    assert not (len(other[0]) == len(first[0]) and np.array_equal(other[0], first[0]))


def test_streaming_chunk_sizes_do_not_drift_across_requests(engine, voice):
    first = [len(c) for c in first_result(engine, voice, "instruct", stream=True, seed=LONG_SEED)]
    assert len(first) >= 3, "the test text must give at least two streaming chunks plus the final one"
    later = [len(c) for c in synth(engine, voice, "instruct", stream=True, seed=LONG_SEED)]
    assert later == first


def test_speed_is_applied_even_when_streaming_is_asked(engine, voice):
    normal = first_result(engine, voice, "cross_lingual", stream=False)[0]
    seed = SHORT_SEED["cross_lingual"]
    fast = list(engine.synthesize(TEXT, voice, Style("cross_lingual", speed=1.5), seed, lambda p: None, stream=True))
    frames = len(normal) // 480
    assert len(fast) == 1 and len(fast[0]) == int(frames / 1.5) * 480


def test_out_of_memory_is_an_engine_error_and_the_next_request_works(engine, voice, monkeypatch):
    baseline = first_result(engine, voice, "zero_shot", stream=False)[0]
    real = engine.model.flow.inference
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.50 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine.model.flow, "inference", flaky)
    with pytest.raises(EngineError) as info:
        synth(engine, voice, "zero_shot")
    assert info.value.stage == "flow"
    assert "memory" in str(info.value).lower()
    again = synth(engine, voice, "zero_shot")[0]
    assert np.array_equal(again, baseline)


def test_version_info_names_model_and_rates(engine):
    info = engine.version_info()
    assert info["engine"] == "cosyvoice3" == engine.name
    assert info["sample_rate"] == engine.sample_rate == 24000
    assert info["token_frame_rate"] == 25
    assert info["device"] == "cpu" and info["precision"] == "fp32"
    assert info["identity"]["yaml_sha1"]
    assert info["llm_weights"] == "llm.pt"
    caps = engine.capabilities()
    assert set(caps.modes) == {"zero_shot", "cross_lingual", "instruct"}
    assert caps.prompt_sample_rates == (16000, 24000)       # speech tokenizer/campplus, then the flow's prompt mel
    assert engine.style_notices(Style("instruct", instruct_text=INSTRUCT)) == []


def test_llm_weights_picks_the_checkpoint_the_llm_loads(engine, tmp_path):
    # The release may ship llm.rl.pt beside llm.pt; the engine loads whichever file it is told to.
    model_dir = make_tiny_model_dir(FIXTURE, tmp_path / "model")
    state = torch.load(FIXTURE / "llm.pt", map_location="cpu", weights_only=True)
    state["llm_decoder.weight"] = -state["llm_decoder.weight"]          # another LLM of the same layout
    torch.save(state, model_dir / "llm.rl.pt")
    other = CosyVoice3Engine(model_dir, device="cpu", precision="fp32", llm_weights="llm.rl.pt")
    assert other.version_info()["llm_weights"] == "llm.rl.pt"
    assert torch.equal(other.model.llm.llm_decoder.weight, state["llm_decoder.weight"])
    assert not torch.equal(other.model.llm.llm_decoder.weight, engine.model.llm.llm_decoder.weight)
    with pytest.raises(ModelDirError, match=r"llm\.dpo\.pt"):
        CosyVoice3Engine(model_dir, device="cpu", llm_weights="llm.dpo.pt")
    with pytest.raises(ModelDirError, match="file name inside the model dir"):
        CosyVoice3Engine(model_dir, device="cpu", llm_weights="../llm.pt")


def _rss_mib() -> float:
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@pytest.mark.slow
def test_twenty_streaming_requests_same_chunks_flat_memory(engine, voice):
    sizes, rss = [], []
    for _ in range(20):
        sizes.append([len(c) for c in synth(engine, voice, "instruct", stream=True, seed=LONG_SEED)])
        rss.append(_rss_mib())
    assert len(sizes[0]) >= 3
    assert sizes[19] == sizes[0]
    assert rss[19] <= rss[4] * 1.05, f"RSS grew from {rss[4]:.0f} MiB to {rss[19]:.0f} MiB"
