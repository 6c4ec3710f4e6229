"""Device, precision and out-of-memory helpers for the CosyVoice3 engine.

Precision follows the official code's split (FunAudioLLM/CosyVoice: `fp16=True` is autocast over float32
weights; its GPU serving recipe runs the LLM in bf16), never a whole model cast to half:

    --precision   LLM matmuls          flow (DiT) matmuls   HiFT     norms, residual stream, rotary tables,
                                                                     ODE state and time grid
    fp32          fp32                 fp32                 fp32     fp32
    fp16          fp16                 fp16                 fp32     fp32
    bf16          bf16 (else fp16)     bf16 (else fp16)     fp32     fp32
    auto          bf16 (else fp16)     fp16                 fp32     fp32

"else fp16": on a GPU without native bf16 (compute capability below 8.0: T4, V100, RTX 20xx), where torch
would only emulate it. The LLM's projection weights are stored in its matmul dtype and it runs under
autocast, so its norms and residual stream stay float32 and no weight is re-cast per token; the flow keeps
float32 weights under fp16/bf16 autocast, as the official CLI does. On CPU everything runs float32
whatever was asked (half precision is slower there and the parity tolerances are float32 ones).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PRECISION_CHOICES = ("auto", *PRECISIONS)
NATIVE_BF16_CAPABILITY = (8, 0)      # Ampere and later: bf16 tensor cores

# precision -> (LLM matmul dtype, flow matmul dtype) with native bf16; without it bf16 becomes fp16.
PRECISION_PLAN = {"fp32": ("fp32", "fp32"), "fp16": ("fp16", "fp16"), "bf16": ("bf16", "bf16"),
                  "auto": ("bf16", "fp16")}

Autocast = Callable[[], contextlib.AbstractContextManager]


@dataclass(frozen=True)
class Placement:
    device: torch.device
    precision: str            # what was resolved: "fp32" on CPU whatever was asked
    requested_precision: str
    llm_precision: str = "fp32"     # the LLM's matmul dtype (see the table above)
    flow_precision: str = "fp32"    # the DiT's matmul dtype

    @property
    def dtype(self) -> torch.dtype:
        """The dtype weights are loaded in: float32 (half precision is applied per part, see the table)."""
        return torch.float32

    @property
    def notice(self) -> str | None:
        if self.precision == self.requested_precision or self.requested_precision == "auto":
            return None
        if self.device.type != "cuda":
            return f"precision {self.requested_precision} is only used on CUDA; running {self.precision} on {self.device.type}"
        return (f"precision {self.requested_precision} needs a GPU with native bf16 (compute capability 8.0+); "
                f"running {self.precision}")

    def llm_autocast(self) -> Autocast:
        return autocast_for(self.device, self.llm_precision)

    def flow_autocast(self) -> Autocast:
        return autocast_for(self.device, self.flow_precision)


def autocast_for(device: torch.device, precision: str) -> Autocast:
    """A factory of autocast contexts computing matmuls in `precision` (a no-op for fp32). The weight-cast
    cache is off: a captured CUDA graph must not depend on a cache that outlives it."""
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = PRECISIONS[precision]
    return lambda: torch.autocast(device.type, dtype=dtype, cache_enabled=False)


def resolve_device(device: str) -> torch.device:
    """"auto" picks CUDA when present; asking for CUDA without one is an error, not a silent fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but torch sees no CUDA device")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"unknown device {device!r}: use auto, cpu or cuda")
    return torch.device(device)


def has_native_bf16(capability: tuple[int, int]) -> bool:
    """bf16 in hardware (not torch's emulation, which is_bf16_supported() counts by default)."""
    return tuple(capability) >= NATIVE_BF16_CAPABILITY


def effective_precision(device: torch.device, precision: str, bf16_supported: bool) -> str:
    """What runs on `device` when `precision` is asked: fp32 off CUDA; bf16 -> fp16 without native bf16."""
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(PRECISION_CHOICES)}")
    if device.type != "cuda":
        return "fp32"
    if precision == "bf16" and not bf16_supported:
        return "fp16"
    return precision


def precision_plan(precision: str, bf16_supported: bool) -> tuple[str, str]:
    """(LLM matmul precision, flow matmul precision) for an effective precision (see the module table)."""
    llm, flow = PRECISION_PLAN[precision]
    if not bf16_supported:
        llm, flow = ("fp16" if p == "bf16" else p for p in (llm, flow))
    return llm, flow


def place(device: str = "auto", precision: str = "auto",
          capability: Callable[[torch.device], tuple[int, int]] | None = None) -> Placement:
    """Where and in what precision the engine runs; `capability` (tests) replaces the GPU's compute capability."""
    resolved = resolve_device(device)
    bf16 = False
    if resolved.type == "cuda":
        bf16 = has_native_bf16((capability or torch.cuda.get_device_capability)(resolved))
    effective = effective_precision(resolved, precision, bf16)
    llm, flow = precision_plan(effective, bf16)
    return Placement(resolved, effective, precision, llm, flow)


def half_projections(llm: nn.Module, precision: str) -> nn.Module:
    """Store the LLM's projection weights (every nn.Linear) in `precision`, in place; embeddings, norms
    and rotary tables stay float32. Run it under the matching autocast: the matmuls then read these
    weights as they are, and the residual stream and norms stay float32."""
    if precision != "fp32":
        for module in llm.modules():
            if isinstance(module, nn.Linear):
                module.to(PRECISIONS[precision])
    return llm


class Float32Buffers(nn.Module):
    """A module whose buffers named in `float32_buffers` stay float32 through .to(dtype) / .half()
    (rotary inverse frequencies: in half precision their angles drift by tenths of a radian at
    1000 positions). Device moves still apply."""

    float32_buffers: tuple[str, ...] = ()

    def _apply(self, fn, recurse=True):
        kept = {name: self._buffers[name] for name in self.float32_buffers if self._buffers.get(name) is not None}
        super()._apply(fn, recurse)
        for name, before in kept.items():
            after = self._buffers[name]
            if after is not None and after.dtype != torch.float32:
                self._buffers[name] = before.to(device=after.device, dtype=torch.float32)
        return self


def is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    # Some kernels raise a plain RuntimeError with the allocator's message.
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()
