"""A request whose model output goes non-finite (half precision overflow) fails alone, with a message,
while the requests beside it finish with the tokens they get alone; int8 is refused on CUDA."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from conftest import FIXTURE
from cosyvoice.engines.cosyvoice3 import CosyVoice3Engine
from cosyvoice.engines.cosyvoice3.config import ModelConfig, SamplingConfig
from cosyvoice.engines.cosyvoice3.llm import load_llm
from cosyvoice.engines.cosyvoice3.model import CosyVoice3Model, SynthesisInputs
from cosyvoice.engines.cosyvoice3.sampling import ras_sampler
from cosyvoice.engines.cosyvoice3.scheduler import DecodeScheduler, prepare_batched_decoding
from cosyvoice.errors import EngineError
from cosyvoice.parity import load_case
from test_cv3_captured_step import requests
from tiny_onnx import make_tiny_model_dir

torch.set_num_threads(2)

CFG = ModelConfig.from_model_dir(FIXTURE)


def poison_slot(decoder, slot: int, after_steps: int) -> None:
    """Make `slot`'s logits NaN from step `after_steps` on, as an fp16 overflow would."""
    plain, steps = decoder.step_fn, [0]

    def step(tokens, rows):
        logits = plain(tokens, rows).clone()
        steps[0] += 1
        if steps[0] > after_steps and slot in rows.slot_list:
            logits[rows.slot_list.index(slot)] = float("nan")
        return logits

    decoder.step_fn = step


def test_non_finite_logits_fail_that_request_only() -> None:
    llm = load_llm(FIXTURE / "llm.pt", CFG.llm)
    scheduler = DecodeScheduler(prepare_batched_decoding(llm, 3, 512))
    try:
        alone = [list(scheduler.submit(r)) for r in requests(llm)]
        poison_slot(scheduler.decoder, 1, after_steps=3)
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(lambda r: list(scheduler.submit(r)), r) for r in requests(llm)]
        results = []
        for future in futures:
            try:
                results.append(future.result())
            except EngineError as err:
                results.append(err)
    finally:
        scheduler.close()
    failed = [r for r in results if isinstance(r, EngineError)]
    assert len(failed) == 1 and failed[0].stage == "llm" and "non-finite" in str(failed[0])
    assert [r for r in results if not isinstance(r, EngineError)] == [a for a, r in zip(alone, results)
                                                                      if not isinstance(r, EngineError)]


def test_a_non_finite_mel_fails_the_request_with_the_flow_stage() -> None:
    model = CosyVoice3Model.load(FIXTURE, "cpu")
    with torch.no_grad():
        model.flow.estimator.proj_out.bias.fill_(float("inf"))
    case = load_case(FIXTURE, "tts_greedy.pt")
    inputs = SynthesisInputs(case["text"], case["prompt_text"], case["llm_prompt_speech_token"],
                             case["flow_prompt_speech_token"], case["prompt_speech_feat"], case["flow_embedding"])
    greedy = SamplingConfig(top_p=0.8, top_k=1, win_size=10, tau_r=1.1)
    with pytest.raises(EngineError, match="non-finite mel") as caught:
        model.tts(inputs, sampler=ras_sampler(greedy))
    assert caught.value.stage == "flow"


def test_int8_is_refused_on_cuda_with_a_clear_message(tmp_path, monkeypatch) -> None:
    model_dir = make_tiny_model_dir(FIXTURE, tmp_path / "model")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    with pytest.raises(ValueError, match="int8 runs on CPU only"):
        CosyVoice3Engine(model_dir, device="cuda", quantize="int8")
