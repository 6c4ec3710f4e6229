"""The nucleus head is the released one: the top_k of a stable descending sort, ties in id order."""
from __future__ import annotations

import pytest
import torch

from cosyvoice.engines.cosyvoice3.sampling import top_k_stable


def full_sort_head(probs: torch.Tensor, k: int):
    values, ids = probs.sort(descending=True, stable=True)
    return values[:k], ids[:k]


@pytest.mark.parametrize("levels", [None, 3, 40, 1000])   # None: distinct values; else many exact ties
@pytest.mark.parametrize("k", [1, 25, 6761, 7000])
def test_head_equals_the_full_stable_sort(levels, k) -> None:
    gen = torch.Generator().manual_seed(k + (levels or 0))
    for _ in range(20):
        logits = torch.randn(6761, generator=gen)
        if levels is not None:   # quantise so that many ids share a value, also at the k-th place
            logits = torch.round(logits * levels / 4) / levels
        probs = logits.softmax(dim=0)
        got, want = top_k_stable(probs, k), full_sort_head(probs, k)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_masked_ids_tie_at_zero_and_keep_id_order() -> None:
    probs = torch.zeros(100)
    probs[[7, 3, 50]] = torch.tensor([0.5, 0.3, 0.2])
    values, ids = top_k_stable(probs, 6)
    assert ids.tolist() == [7, 3, 50, 0, 1, 2] and values.tolist()[:3] == pytest.approx([0.5, 0.3, 0.2])
