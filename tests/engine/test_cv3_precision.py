"""Precision as the official code splits it (devices.PRECISION_PLAN): half-precision matmuls, float32
norms, residual stream, rotary tables and HiFT; bf16 only where the GPU has it natively; CPU float32."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import FIXTURE
from cosyvoice.engines.cosyvoice3.config import ModelConfig, SamplingConfig
from cosyvoice.engines.cosyvoice3.devices import autocast_for, half_projections, place
from cosyvoice.engines.cosyvoice3.flow import load_flow
from cosyvoice.engines.cosyvoice3.llm import load_llm
from cosyvoice.engines.cosyvoice3.model import CosyVoice3Model, SynthesisInputs
from cosyvoice.engines.cosyvoice3.sampling import ras_sampler
from cosyvoice.parity import load_case

torch.set_num_threads(2)

CFG = ModelConfig.from_model_dir(FIXTURE)
T4, V100, A100, H100 = (7, 5), (7, 0), (8, 0), (9, 0)


def cuda_placement(monkeypatch, asked: str, capability: tuple[int, int]):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    return place("cuda", asked, capability=lambda device: capability)


# What the official code runs (FunAudioLLM/CosyVoice): fp16 = autocast fp16 over fp32 weights for the LLM
# and the flow (cli/model.py); its GPU serving recipe runs the LLM in bf16; HiFT is float32 in ours.
@pytest.mark.parametrize("asked, capability, llm, flow", [
    ("auto", H100, "bf16", "fp16"), ("auto", A100, "bf16", "fp16"),
    ("auto", T4, "fp16", "fp16"), ("auto", V100, "fp16", "fp16"),          # no native bf16: never emulated
    ("fp16", H100, "fp16", "fp16"), ("fp16", T4, "fp16", "fp16"),
    ("bf16", H100, "bf16", "bf16"), ("bf16", T4, "fp16", "fp16"),
    ("fp32", H100, "fp32", "fp32")])
def test_precision_plan_per_gpu(monkeypatch, asked, capability, llm, flow) -> None:
    placement = cuda_placement(monkeypatch, asked, capability)
    assert (placement.llm_precision, placement.flow_precision) == (llm, flow)
    assert placement.dtype == torch.float32                  # weights load float32; halves are per part
    assert (placement.notice is not None) == (asked == "bf16" and capability < A100)


@pytest.mark.parametrize("asked", ["auto", "fp32", "fp16", "bf16"])
def test_cpu_runs_float32_whatever_is_asked(asked) -> None:
    placement = place("cpu", asked)
    assert (placement.precision, placement.llm_precision, placement.flow_precision) == ("fp32",) * 3
    assert (placement.notice is None) == (asked in ("auto", "fp32"))
    with pytest.raises(ValueError, match="precision"):
        place("cpu", "int4")


def test_rotary_tables_stay_float32_when_the_weights_go_half() -> None:
    flow = load_flow(FIXTURE, CFG.flow)
    exact = flow.estimator.inv_freq.clone()
    flow.to(torch.float16)
    assert flow.estimator.inv_freq.dtype == torch.float32 and torch.equal(flow.estimator.inv_freq, exact)
    assert flow.estimator.proj_out.weight.dtype == torch.float16         # the weights did go half
    llm = load_llm(FIXTURE / "llm.pt", CFG.llm)
    exact = llm.rope_inv_freq.clone()
    llm.to(torch.bfloat16)
    assert llm.rope_inv_freq.dtype == torch.float32 and torch.equal(llm.rope_inv_freq, exact)


def test_half_llm_keeps_norms_and_residual_stream_float32() -> None:
    # The CUDA recipe on CPU (bf16 autocast): projections stored bf16, everything else float32.
    llm = half_projections(load_llm(FIXTURE / "llm.pt", CFG.llm), "bf16")
    assert {m.weight.dtype for m in llm.modules() if isinstance(m, nn.Linear)} == {torch.bfloat16}
    assert llm.speech_embedding.weight.dtype == llm.norm.weight.dtype == torch.float32
    assert llm.kv_dtype == torch.bfloat16
    residual = []
    llm.layers[0].register_forward_hook(lambda module, args, out: residual.append(out.dtype))
    case = load_case(FIXTURE, "llm_greedy.pt")
    greedy = SamplingConfig(top_p=0.8, top_k=1, win_size=10, tau_r=1.1)
    with autocast_for(torch.device("cpu"), "bf16")():
        tokens = list(llm.generate(case["text"], case["prompt_text"], case["prompt_speech_token"],
                                   sampling=greedy, sampler=ras_sampler(greedy), max_token_text_ratio=3))
    assert tokens and set(residual) == {torch.float32}


def test_flow_under_half_autocast_keeps_the_ode_state_float32_and_hift_float32() -> None:
    model = CosyVoice3Model.load(FIXTURE, "cpu", flow_autocast=autocast_for(torch.device("cpu"), "bf16"))
    assert {p.dtype for p in model.hift.parameters()} <= {torch.float32, torch.float64}   # F0 predictor: float64
    case = load_case(FIXTURE, "tts_greedy.pt")
    inputs = SynthesisInputs(case["text"], case["prompt_text"], case["llm_prompt_speech_token"],
                             case["flow_prompt_speech_token"], case["prompt_speech_feat"], case["flow_embedding"])
    greedy = SamplingConfig(top_p=0.8, top_k=1, win_size=10, tau_r=1.1)
    wav, tokens = model.tts(inputs, sampler=ras_sampler(greedy))
    assert tokens and wav.dtype == torch.float32 and torch.isfinite(wav).all()
    assert wav.shape[1] == len(tokens) * 2 * model.samples_per_frame
    reference = CosyVoice3Model.load(FIXTURE, "cpu")
    exact, _ = reference.tts(inputs, sampler=ras_sampler(greedy))
    assert exact.shape == wav.shape and not torch.equal(exact, wav)     # the autocast really ran
