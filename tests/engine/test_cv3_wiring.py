"""How the cosyvoice3 engine is put together: one EngineConfig, the LLM prepared for batched decoding
without being changed, the scheduler handed in through constructors, parallelism = slots, the kernel
built with torch's C++ ABI, and streaming requests traced per stage like one-shot ones."""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from torch import nn

from conftest import FIXTURE, ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT
from cosyvoice.audio.prompt import load_prompt_audio
from cosyvoice.engines.base import Progress, Style
from cosyvoice.engines.cosyvoice3 import CosyVoice3Engine, cpu_decode_kernel
from cosyvoice.engines.cosyvoice3.config import ModelConfig
from cosyvoice.engines.cosyvoice3.cpu_decode_kernel import RowsLinear
from cosyvoice.engines.cosyvoice3.llm import load_llm
from cosyvoice.engines.cosyvoice3.scheduler import prepare_batched_decoding
from cosyvoice.engines.registry import EngineConfig, create_engine
from cosyvoice.settings import add_flags, build
from tiny_onnx import make_tiny_model_dir

torch.set_num_threads(2)

CFG = ModelConfig.from_model_dir(FIXTURE)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    model_dir = make_tiny_model_dir(FIXTURE, tmp_path_factory.mktemp("cv3wiring") / "model")
    return CosyVoice3Engine(model_dir, device="cpu", precision="fp32", batch_slots=3)


def test_preparing_for_batched_decoding_returns_a_decoder_and_leaves_the_llm_alone() -> None:
    llm = load_llm(FIXTURE / "llm.pt", CFG.llm)
    decoder = prepare_batched_decoding(llm, 4, 256)
    assert isinstance(llm.layers[0].mlp.down, nn.Linear)                    # unchanged
    assert isinstance(decoder.llm.layers[0].mlp.down, RowsLinear)           # the twin decodes
    assert decoder.llm.layers[0].mlp.down.weight.data_ptr() == llm.layers[0].mlp.down.weight.data_ptr()
    assert decoder.llm.speech_embedding.weight is llm.speech_embedding.weight


def test_the_engine_hands_its_scheduler_to_the_model_and_reports_its_parallelism(engine) -> None:
    assert engine.parallelism() == engine.scheduler.slots == 3
    assert engine.model.llm is engine.scheduler.llm
    assert engine.model._decode == engine.scheduler.generate


def test_the_engine_is_built_from_one_config(tmp_path) -> None:
    parser = argparse.ArgumentParser()
    add_flags(parser, EngineConfig)
    args = parser.parse_args(["--engine", "lite", "--batch-slots", "3", "--no-cuda-graphs"])
    config = build(EngineConfig, args, {})
    assert (config.engine, config.batch_slots, config.cuda_graphs, config.precision) == ("lite", 3, False, "auto")
    assert create_engine(config).name == "lite"
    assert create_engine(EngineConfig(engine="auto", model_dir=tmp_path / "missing")).name == "lite"


def test_the_kernel_is_built_with_torchs_cxx_abi() -> None:
    flag = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
    assert flag in cpu_decode_kernel.build_flags()
    x, w = torch.randn(3, 16), torch.randn(5, 16)
    torch.testing.assert_close(cpu_decode_kernel.rows_linear(x, w, None), x @ w.T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stream", [False, True])
def test_every_request_reports_llm_flow_and_hift_stages(engine, stream) -> None:
    voice = engine.prepare_voice(load_prompt_audio(ZERO_SHOT_PROMPT).audio, ZERO_SHOT_TRANSCRIPT)
    stages: list[str] = []

    def on_progress(progress: Progress) -> None:
        if progress.stage:
            stages.append(progress.stage)

    audio = np.concatenate(list(engine.synthesize("你好，今天天气很好。", voice, Style("zero_shot"), 3, on_progress,
                                                  stream=stream)))
    assert audio.size > 0 and stages[0] == "llm" and stages[-1] == "hift"
    assert {"llm", "flow", "hift"} == set(stages)
    assert all(a != b for a, b in zip(stages, stages[1:]))          # each a new span, never repeated
