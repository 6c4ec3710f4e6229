"""Flow decoder parity: our CausalFlow against the official CausalMaskedDiffWithDiT outputs."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from cosyvoice.engines.cosyvoice3.config import ModelConfig
from cosyvoice.engines.cosyvoice3.flow import CausalFlow, load_flow
from cosyvoice.engines.cosyvoice3.noise import constructor_noise

from cosyvoice.parity import CaseResult, compare, exact, float64_tolerance, load_case

CASES = ("flow_nonstream", "flow_stream_chunk", "flow_stream_final")
ESTIMATOR_INPUTS = ("x", "mask", "mu", "t", "spks", "cond", "out")


def run_case(flow: CausalFlow, case: dict, noise: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Our mel for one case plus the traced debug values named as in the case files."""
    seen: dict = {"n_estimator_calls": 0}

    def trace(event: str, tensors: dict) -> None:
        if event == "pre_lookahead":
            seen["pre_lookahead_out"] = tensors["out"].clone()
        elif event == "estimator":
            seen["n_estimator_calls"] += 1
            if tensors["step"] == 0:
                seen.update({f"est0_{name}": tensors[name].clone() for name in ESTIMATOR_INPUTS})

    mel = flow.inference(case["token"], case["prompt_token"], case["prompt_feat"], case["embedding"], noise,
                         streaming=bool(case["streaming"]), finalize=bool(case["finalize"]),
                         n_timesteps=int(case["n_timesteps"]), trace=trace)
    return mel, seen


def run(model_dir: Path, audio_dir: Path | None = None, device: str = "cpu") -> Iterator[CaseResult]:
    model_dir = Path(model_dir)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    cfg = ModelConfig.from_model_dir(model_dir)
    flow = load_flow(model_dir, cfg.flow, device)
    noise = constructor_noise(cfg.flow, cfg.hift).flow_z
    for name in CASES:
        case = load_case(model_dir, f"{name}.pt")
        mel, seen = run_case(flow, case, noise)
        yield compare(f"{name}.mel", mel, case["mel"], float64_tolerance(model_dir, name, "mel"))
        for key in sorted(k for k in case if k.startswith("est0_") or k == "pre_lookahead_out"):
            yield compare(f"{name}.{key}", seen[key], case[key], float64_tolerance(model_dir, name, key))
        if "n_estimator_calls" in case:
            yield exact(f"{name}.n_estimator_calls", [seen["n_estimator_calls"]], [case["n_estimator_calls"]])
