"""Weight-only int8 for the CosyVoice3 LLM's projections (an opt-in speed mode on CPU).

Each nn.Linear of the decoder layers and the speech head is swapped for an Int8Linear holding int8
rows and one float scale per output channel; embeddings stay in the model dtype.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cosyvoice.engines.cosyvoice3.llm import CosyVoice3LM

def _cpu_has_vnni() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def _pack_for_fbgemm(weight: Tensor, scales: Tensor, bias: Tensor | None):
    """Per-row int8 weight -> fbgemm's packed form, or None when this torch/CPU has no x86 int8 engine."""
    if torch.backends.quantized.engine not in ("x86", "fbgemm"):
        return None
    try:
        with warnings.catch_warnings():  # quantized tensors are deprecated, the packed kernels are not (torch 2.13)
            warnings.simplefilter("ignore")
            quantized = torch._make_per_channel_quantized_tensor(
                weight, scales.double(), torch.zeros(weight.shape[0], dtype=torch.long), 0)
            return torch.ops.quantized.linear_prepack(quantized, None if bias is None else bias.float())
    except (RuntimeError, AttributeError):
        return None


class Int8Linear(nn.Module):
    """y = x W^T (+ b) with W stored as int8 rows and one float scale per output channel.

    On x86 CPUs the weight is packed for fbgemm and each call quantises its input to uint8 on the fly
    (one scale per call) so the product runs on int8 dot-product instructions: ~2x faster per decode
    step than dequantising, and much faster for prefill. Without VNNI the input keeps 7 bits, as
    torch's own dynamic quantisation does, because the older int8 instructions saturate otherwise.

    Elsewhere, decode steps (a few rows) use torch's fused int8 GEMV, which is only fast with
    bfloat16 activations on CPU and crashes unless in_features % 16 == 0 (torch 2.13); longer inputs
    dequantise the weight once per call.
    """

    KERNEL_MAX_ROWS = 8
    REDUCE_RANGE = not _cpu_has_vnni()
    weight: Tensor | None            # buffers; all but bias are None when the fbgemm-packed copy is kept
    scales: Tensor | None
    scales_bf16: Tensor | None
    bias: Tensor | None

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()
        scales = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0            # (out,)
        weight_q = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = _pack_for_fbgemm(weight_q, scales, bias) if weight.device.type == "cpu" else None
        kept = self.packed is None   # else the packed copy is the only one kept
        self.register_buffer("weight", weight_q if kept else None)
        self.register_buffer("scales", scales if kept else None)                # float32 (out,)
        self.register_buffer("scales_bf16", scales.to(torch.bfloat16) if kept else None)
        self.register_buffer("bias", bias if kept else None)
        self.use_kernel = linear.in_features % 16 == 0
        self.row_wise_rows = self.KERNEL_MAX_ROWS   # inputs up to this many rows are quantised row by row

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features)                                  # (M, in)
        if self.packed is not None:
            flat = flat.float().contiguous()
            if 1 < flat.shape[0] <= self.row_wise_rows:
                # Decode steps of several requests: the dynamic input scale is per call, so each row
                # is its own call and a request's result never depends on the rows beside it.
                out = torch.cat([torch.ops.quantized.linear_dynamic(row, self.packed, self.REDUCE_RANGE)
                                 for row in flat.split(1)])
            else:
                out = torch.ops.quantized.linear_dynamic(flat, self.packed, self.REDUCE_RANGE)
            return out.to(x.dtype).view(*x.shape[:-1], self.out_features)      # bias already added
        if self.use_kernel and flat.shape[0] <= self.KERNEL_MAX_ROWS:
            out = torch.ops.aten._weight_int8pack_mm(flat.to(torch.bfloat16).contiguous(), self.weight,
                                                     self.scales_bf16).to(x.dtype)
        else:
            assert self.weight is not None and self.scales is not None   # kept whenever not packed
            dense = (self.weight.to(torch.float32) * self.scales[:, None]).to(x.dtype)
            out = F.linear(flat, dense)
        if self.bias is not None:
            out = out + self.bias
        return out.view(*x.shape[:-1], self.out_features)                        # (..., out)


def quantize_int8(model: CosyVoice3LM) -> CosyVoice3LM:
    """Swap every decoder-layer projection and the speech head for Int8Linear, in place.

    Embedding tables stay in the model dtype (only a few rows are read per step)."""
    for layer in model.decoder_layers():
        layer.attn.qkv = Int8Linear(_plain(layer.attn.qkv))
        layer.attn.out = Int8Linear(_plain(layer.attn.out))
        layer.mlp.gate_up = Int8Linear(_plain(layer.mlp.gate_up))
        layer.mlp.down = Int8Linear(_plain(layer.mlp.down))
    model.llm_decoder = Int8Linear(_plain(model.llm_decoder))
    return model


def _plain(projection: nn.Module) -> nn.Linear:
    if not isinstance(projection, nn.Linear):
        raise TypeError(f"quantize_int8 takes nn.Linear projections, not {type(projection).__name__}")
    return projection
