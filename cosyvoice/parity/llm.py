"""LLM parity: teacher-forced logits, greedy decoding and seeded RAS decoding against the
official CosyVoice3LM outputs in cases/llm_*.pt."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch

from cosyvoice.engines.cosyvoice3.config import ModelConfig, SamplingConfig
from cosyvoice.engines.cosyvoice3.llm import CosyVoice3LM, decode_length_limits, load_llm
from cosyvoice.engines.cosyvoice3.model_dir import LLM_WEIGHTS
from cosyvoice.engines.cosyvoice3.sampling import ras_pick
from cosyvoice.parity import CaseResult, compare, exact, float64_tolerance, load_case

STEP_LOGITS = "step_logits (all steps)"
# The greedy case: top_k 1 makes the nucleus an argmax, tau_r 1.1 switches the repetition resample off.
GREEDY = SamplingConfig(top_p=0.8, top_k=1, win_size=10, tau_r=1.1)


class Run:
    """One generate() call with its raw step logits and every id the sampler picked (incl. the stop id)."""

    def __init__(self, model: CosyVoice3LM, case: dict, sampling: SamplingConfig, forced: list[int] | None = None):
        self.logits: list[torch.Tensor] = []
        self.picks: list[int] = []
        stop = model.cfg.eos_id

        def sampler(logp: torch.Tensor, decoded: list[int], generator: torch.Generator | None) -> int:
            if forced is not None:
                token = forced[len(decoded)] if len(decoded) < len(forced) else stop
            else:
                token = ras_pick(logp.cpu(), decoded, sampling, generator)   # drawn on CPU, as the case was
            self.picks.append(token)
            return token

        ratios = {key: case[key] for key in ("min_token_text_ratio", "max_token_text_ratio") if key in case}
        self.tokens = list(model.generate(case["text"], case["prompt_text"], case["prompt_speech_token"],
                                          sampling=sampling, sampler=sampler, **ratios,
                                          on_logits=lambda logits: self.logits.append(logits.clone())))
        self.stopped = len(self.picks) > len(self.tokens)


def run(model_dir: Path, audio_dir: Path | None = None, device: str = "cpu") -> Iterator[CaseResult]:
    model_dir = Path(model_dir)
    cfg = ModelConfig.from_model_dir(model_dir)
    model = load_llm(model_dir / LLM_WEIGHTS, cfg.llm, device)

    case = load_case(model_dir, "llm_teacher_forced.pt")
    forced = case["forced_tokens"].tolist()
    replay = Run(model, case, cfg.sampling, forced=forced)
    yield exact("llm_teacher_forced.tokens", replay.tokens, forced)
    logits = torch.stack(replay.logits[:len(forced)]).cpu()
    yield compare("llm_teacher_forced.logits", logits, case["logits"],
                  float64_tolerance(model_dir, "llm_teacher_forced", "logits"))
    yield compare("llm_teacher_forced.logp", logits.log_softmax(dim=-1), case["logp"],
                  float64_tolerance(model_dir, "llm_teacher_forced", "logp"))

    case = load_case(model_dir, "llm_greedy.pt")
    limits = decode_length_limits(case["text"].shape[1], case["min_token_text_ratio"], case["max_token_text_ratio"])
    yield exact("llm_greedy.min_max_len", list(limits), [case["min_len"], case["max_len"]])
    greedy = Run(model, case, GREEDY)
    yield exact("llm_greedy.tokens", greedy.tokens, case["tokens"])
    expected_stop = [case["stop_token"]] if "stop_token" in case else []
    yield exact("llm_greedy.stop_token", greedy.picks[-1:] if greedy.stopped else [], expected_stop)
    yield from _step_logits(model_dir, "llm_greedy", greedy, case)

    case = load_case(model_dir, "llm_ras_seeded.pt")
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG as it was
        torch.manual_seed(case["torch_manual_seed"])
        seeded = Run(model, case, cfg.sampling)
    yield exact("llm_ras_seeded.tokens", seeded.tokens, case["tokens"])
    yield from _step_logits(model_dir, "llm_ras_seeded", seeded, case)


def _step_logits(model_dir: Path, name: str, result: Run, case: dict) -> Iterator[CaseResult]:
    tolerance = float64_tolerance(model_dir, name, STEP_LOGITS)
    first = case["step_logits_first3"]
    yield compare(f"{name}.step_logits_first3", torch.stack(result.logits[:first.shape[0]]).cpu(), first, tolerance)
    yield compare(f"{name}.step_logits_last", result.logits[-1][None], case["step_logits_last"], tolerance)
