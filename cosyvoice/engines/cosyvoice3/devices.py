"""Device, precision and out-of-memory helpers for the CosyVoice3 engine.

On CUDA the LLM and the flow's DiT are *stored* in the chosen half precision (no per-step autocast,
so no weight is re-cast per token); HiFT stays float32 (its phase-sensitive convolutions are the
least tolerant). "auto" means bf16 where the GPU supports it, else fp16. On CPU everything runs
float32 whatever was asked (half precision is slower there and the parity tolerances are float32 ones).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PRECISION_CHOICES = ("auto", *PRECISIONS)


@dataclass(frozen=True)
class Placement:
    device: torch.device
    precision: str            # what actually runs: "fp32" on CPU whatever was asked
    requested_precision: str

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the LLM and DiT weights are stored (and computed) in."""
        return PRECISIONS[self.precision]

    @property
    def notice(self) -> str | None:
        if self.precision != self.requested_precision and self.requested_precision != "auto":
            return f"precision {self.requested_precision} is only used on CUDA; running {self.precision} on {self.device.type}"
        return None


def resolve_device(device: str) -> torch.device:
    """"auto" picks CUDA when present; asking for CUDA without one is an error, not a silent fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but torch sees no CUDA device")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"unknown device {device!r}: use auto, cpu or cuda")
    return torch.device(device)


def effective_precision(device: torch.device, precision: str, bf16_supported: bool) -> str:
    """What runs on `device` when `precision` is asked: fp32 off CUDA; auto -> bf16, or fp16 without bf16."""
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(PRECISION_CHOICES)}")
    if device.type != "cuda":
        return "fp32"
    if precision in ("auto", "bf16"):
        return "bf16" if bf16_supported else "fp16"
    return precision


def place(device: str = "auto", precision: str = "auto") -> Placement:
    resolved = resolve_device(device)
    bf16 = resolved.type == "cuda" and torch.cuda.is_bf16_supported()
    return Placement(resolved, effective_precision(resolved, precision, bf16), precision)


def is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    # Some kernels raise a plain RuntimeError with the allocator's message.
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def release_memory(device: torch.device) -> None:
    """Return cached blocks to the driver so one long request does not starve the next."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
