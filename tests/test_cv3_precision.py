"""Half precision is stored, not autocast: the LLM and DiT weights live in the chosen dtype, HiFT in
float32; "auto" picks bf16 where the GPU has it, else fp16; CPU always runs float32."""
from __future__ import annotations

import pytest
import torch

from conftest import FIXTURE
from cosyvoice.engines.cosyvoice3.config import SamplingConfig
from cosyvoice.engines.cosyvoice3.devices import effective_precision, place
from cosyvoice.engines.cosyvoice3.model import CosyVoice3Model, SynthesisInputs
from cosyvoice.engines.cosyvoice3.sampling import ras_sampler
from cosyvoice.parity import load_case

torch.set_num_threads(2)

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


@pytest.mark.parametrize("asked, bf16_ok, runs", [
    ("auto", True, "bf16"), ("auto", False, "fp16"), ("bf16", False, "fp16"), ("fp16", True, "fp16"),
    ("fp32", True, "fp32")])
def test_precision_on_cuda(asked, bf16_ok, runs) -> None:
    assert effective_precision(CUDA, asked, bf16_ok) == runs


@pytest.mark.parametrize("asked", ["auto", "fp32", "fp16", "bf16"])
def test_cpu_runs_float32_whatever_is_asked(asked) -> None:
    placement = place("cpu", asked)
    assert placement.precision == "fp32" and placement.dtype == torch.float32
    assert (placement.notice is None) == (asked in ("auto", "fp32"))
    with pytest.raises(ValueError, match="precision"):
        place("cpu", "int4")


def test_half_precision_weights_are_stored_and_hift_stays_float32() -> None:
    # The CUDA code path, exercised on CPU with bf16 storage: no autocast anywhere, dtypes meet at the seams.
    model = CosyVoice3Model.load(FIXTURE, "cpu", torch.bfloat16)
    assert {p.dtype for p in model.llm.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.flow.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.hift.parameters()} <= {torch.float32, torch.float64}   # F0 predictor: float64
    case = load_case(FIXTURE, "tts_greedy.pt")
    inputs = SynthesisInputs(case["text"], case["prompt_text"], case["llm_prompt_speech_token"],
                             case["flow_prompt_speech_token"], case["prompt_speech_feat"], case["flow_embedding"])
    greedy = SamplingConfig(top_p=0.8, top_k=1, win_size=10, tau_r=1.1)
    wav, tokens = model.tts(inputs, sampler=ras_sampler(greedy))
    assert tokens and wav.dtype == torch.float32 and torch.isfinite(wav).all()
    assert wav.shape[1] == len(tokens) * 2 * model.samples_per_frame
