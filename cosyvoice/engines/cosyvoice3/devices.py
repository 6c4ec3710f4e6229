"""Device, precision and out-of-memory helpers for the CosyVoice3 engine.

Weights stay float32 everywhere; on CUDA the forward passes run under autocast in the requested
half precision. On CPU we always compute in float32 (half precision is slower there and the
parity tolerances are float32 ones).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Placement:
    device: torch.device
    precision: str            # what actually runs: "fp32" on CPU whatever was asked
    requested_precision: str

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return None if self.precision == "fp32" else PRECISIONS[self.precision]

    @property
    def notice(self) -> str | None:
        if self.precision != self.requested_precision:
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


def place(device: str = "auto", precision: str = "fp32") -> Placement:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    resolved = resolve_device(device)
    effective = precision if resolved.type == "cuda" else "fp32"
    if effective == "bf16" and not torch.cuda.is_bf16_supported():
        effective = "fp16"
    return Placement(resolved, effective, precision)


def autocast(placement: Placement) -> contextlib.AbstractContextManager:
    """Autocast for CUDA half precision; a no-op context otherwise."""
    dtype = placement.autocast_dtype
    if dtype is None or placement.device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)


def is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    # Some kernels raise a plain RuntimeError with the allocator's message.
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def release_memory(device: torch.device) -> None:
    """Return cached blocks to the driver so one long request does not starve the next."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
