"""Every engine keeps the `Engine` protocol of cosyvoice/engines/base.py: the lite engine, the cosyvoice3
engine on the tiny random-weight fixture, and the fake the service tests drive (`ControlledEngine`).

The service relies on nothing else, so an engine that passes here can be put behind it."""
from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from cosyvoice.audio.prompt import load_prompt_audio
from cosyvoice.engines.base import Capabilities, Engine, Progress, Style, Voice
from cosyvoice.modes import MODE_IDS

from conftest import FIXTURE, ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT

torch.set_num_threads(2)

TEXT = "你好，今天天气很好。"
INSTRUCT = "请用四川话表达。"
# Seeds for which the tiny random LLM stops early (short, cheap audio), as in tests/engine/test_cv3_engine.py;
# the other engines take any seed.
CV3_SEED = {"zero_shot": 8, "cross_lingual": 4, "instruct": 6}


def _lite():
    from cosyvoice.engines.lite import LiteEngine
    return LiteEngine()


def _cosyvoice3(tmp_path_factory):
    from cosyvoice.engines.cosyvoice3 import CosyVoice3Engine
    from tiny_onnx import make_tiny_model_dir
    model_dir = make_tiny_model_dir(FIXTURE, tmp_path_factory.mktemp("contract-cv3") / "model")
    return CosyVoice3Engine(model_dir, device="cpu", precision="fp32")


def _fake():
    from unit.test_service import ControlledEngine
    engine = ControlledEngine()
    engine.release.set()                  # never held back: this test is about shapes, not timing
    return engine


@pytest.fixture(scope="module", params=["lite", "cosyvoice3", "fake"])
def engine(request, tmp_path_factory):
    if request.param == "cosyvoice3":
        return _cosyvoice3(tmp_path_factory)
    return _lite() if request.param == "lite" else _fake()


@pytest.fixture(scope="module")
def voice(engine) -> Voice:
    return engine.prepare_voice(load_prompt_audio(ZERO_SHOT_PROMPT).audio, ZERO_SHOT_TRANSCRIPT)


def _protocol_methods() -> list[str]:
    return sorted(name for name, value in vars(Engine).items()
                  if inspect.isfunction(value) and not name.startswith("_"))


def _seed(engine, mode: str) -> int:
    return CV3_SEED[mode] if engine.name == "cosyvoice3" else 3


def _style(mode: str) -> Style:
    return Style(mode, instruct_text=INSTRUCT if mode == "instruct" else "")


def _render(engine, voice, mode: str, stream: bool, progress: list | None = None) -> list[np.ndarray]:
    report = progress.append if progress is not None else (lambda p: None)
    return list(engine.synthesize(TEXT, voice, _style(mode), _seed(engine, mode), report, stream=stream))


def test_every_protocol_member_is_there_with_a_signature_the_service_can_call(engine):
    for attribute in Engine.__annotations__:
        assert hasattr(engine, attribute), f"{type(engine).__name__} has no {attribute}"
    for name in _protocol_methods():
        assert callable(getattr(engine, name, None)), f"{type(engine).__name__} has no method {name}"
        wanted = list(inspect.signature(getattr(Engine, name)).parameters.values())[1:]   # without self
        given = inspect.signature(getattr(engine, name)).parameters
        for param in wanted:
            assert param.name in given, f"{type(engine).__name__}.{name} takes no {param.name!r}"
            if param.default is not inspect.Parameter.empty:
                assert given[param.name].default is not inspect.Parameter.empty, \
                    f"{type(engine).__name__}.{name}: {param.name!r} must stay optional"
        extra = [p for p in given.values() if p.name not in {w.name for w in wanted}
                 and p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        assert not extra, f"{type(engine).__name__}.{name} needs arguments the service never passes: {extra}"


def test_attributes_and_capabilities_are_consistent(engine):
    assert isinstance(engine.name, str) and engine.name
    assert isinstance(engine.model_label, str) and engine.model_label
    assert isinstance(engine.device, str) and engine.device
    assert isinstance(engine.sample_rate, int) and 8000 <= engine.sample_rate <= 48000
    caps = engine.capabilities()
    assert isinstance(caps, Capabilities)
    assert caps.modes and len(set(caps.modes)) == len(caps.modes) and set(caps.modes) <= set(MODE_IDS)
    assert caps.prompt_sample_rates
    assert all(isinstance(rate, int) and 8000 <= rate <= 48000 for rate in caps.prompt_sample_rates)
    parallelism = engine.parallelism()
    assert isinstance(parallelism, int) and parallelism >= 1


def test_notices_and_reports_have_the_documented_types(engine):
    notices = engine.startup_notices()
    assert isinstance(notices, list) and all(isinstance(n, str) for n in notices)
    for mode in engine.capabilities().modes:
        style_notices = engine.style_notices(_style(mode))
        assert isinstance(style_notices, list) and all(isinstance(n, str) and n for n in style_notices)
    assert isinstance(engine.version_info(), dict)
    counter = engine.text_token_counter()
    assert counter is None or (isinstance(counter(TEXT), int) and counter(TEXT) > 0)
    identity = engine.feature_identity()
    assert isinstance(identity, str) and identity


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_every_mode_yields_finite_float32_mono_audio_the_same_for_the_same_seed(engine, voice, stream):
    for mode in engine.capabilities().modes:
        progress: list = []
        chunks = _render(engine, voice, mode, stream, progress)
        assert chunks, f"{engine.name} {mode}: no audio"
        for chunk in chunks:
            assert isinstance(chunk, np.ndarray) and chunk.dtype == np.float32 and chunk.ndim == 1
            assert np.isfinite(chunk).all(), f"{engine.name} {mode}: NaN or inf samples"
            assert np.abs(chunk).max(initial=0.0) <= 1.0, f"{engine.name} {mode}: samples beyond full scale"
        seconds = sum(len(c) for c in chunks) / engine.sample_rate
        assert 0.05 < seconds < 60, f"{engine.name} {mode}: {seconds:.2f} s for a ten-character sentence"
        assert all(isinstance(p, Progress) for p in progress)
        again = _render(engine, voice, mode, stream)
        assert np.array_equal(np.concatenate(chunks), np.concatenate(again)), \
            f"{engine.name} {mode}: the same seed gave different audio"


def test_exported_voice_imports_to_the_same_audio(engine, voice):
    arrays = engine.export_voice(voice)
    assert isinstance(arrays, dict) and all(isinstance(a, np.ndarray) and a.dtype != object for a in arrays.values())
    restored = engine.import_voice(arrays, voice.prompt_text)
    assert isinstance(restored, Voice)
    mode = engine.capabilities().modes[0]
    assert np.array_equal(np.concatenate(_render(engine, voice, mode, False)),
                          np.concatenate(_render(engine, restored, mode, False)))
