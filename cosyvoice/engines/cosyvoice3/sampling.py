"""Speech-token sampling for the CosyVoice3 LLM: repetition-aware sampling (RAS) as released.

Every random draw goes through `torch.multinomial` with the given generator (None = torch's global
generator), in the same order and on tensors of the same length as the official code, so a seeded
run picks the same tokens. The nucleus running sum is kept in float32 like the released loop, whose
cut-off decides how many entries the first multinomial sees (and so how much randomness it uses).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from cosyvoice.engines.cosyvoice3.config import SamplingConfig

# (logp over the speech vocabulary (V,), tokens decoded so far, generator) -> next id.
# logp may be modified in place by the sampler; the list must not be.
Sampler = Callable[[torch.Tensor, list[int], "torch.Generator | None"], int]


def top_k_stable(probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first k (values, ids) of probs.sort(descending=True, stable=True), ties in id order, without
    sorting all V entries (a full sort of the speech vocabulary costs ~0.5 ms per request per step)."""
    if k >= probs.numel():
        values, ids = probs.sort(descending=True, stable=True)
        return values[:k], ids[:k]
    kth = probs.topk(k, sorted=False).values.min()
    candidates = (probs >= kth).nonzero().squeeze(1)        # every id that can be in the head, ascending
    values, order = probs[candidates].sort(descending=True, stable=True)
    return values[:k], candidates[order[:k]]


def nucleus_pick(logp: torch.Tensor, top_p: float, top_k: int,
                 generator: torch.Generator | None = None) -> int:
    """Draw from the smallest set of most likely ids whose probability reaches top_p (at most top_k)."""
    head, order = top_k_stable(logp.softmax(dim=0), top_k)    # (top_k,), ties keep the lower id first
    running, limit, count = np.float32(0.0), float(top_p), 0
    for value in head.tolist():
        if not running < limit:
            break
        running = np.float32(running + np.float32(value))
        count += 1
    chosen = head[:count].multinomial(1, replacement=True, generator=generator)
    return int(order[chosen])


def ras_pick(logp: torch.Tensor, decoded: list[int], cfg: SamplingConfig,
             generator: torch.Generator | None = None) -> int:
    """Nucleus pick; if that id is already frequent in the recent window, draw again from the whole
    distribution with the pick itself excluded (this breaks loops of repeated tokens)."""
    pick = nucleus_pick(logp, cfg.top_p, cfg.top_k, generator)
    repeats = decoded[-cfg.win_size:].count(pick)
    if repeats >= cfg.win_size * cfg.tau_r:
        logp[pick] = -float("inf")
        pick = int(logp.softmax(dim=0).multinomial(1, replacement=True, generator=generator))
    return pick


def ras_sampler(cfg: SamplingConfig) -> Sampler:
    def sample(logp: torch.Tensor, decoded: list[int], generator: torch.Generator | None) -> int:
        return ras_pick(logp, decoded, cfg, generator)
    return sample
