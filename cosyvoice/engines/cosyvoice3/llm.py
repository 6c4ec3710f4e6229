"""CosyVoice3 speech-token LLM: a Qwen2 decoder run on embeddings, with CosyVoice3's speech
embedding table and output head.

Sequence fed to the decoder for one request (all ids of the speech vocabulary index
`speech_embedding`, text ids index Qwen's `embed_tokens`):

    [sos] [prompt text ++ text] [task_id] [prompt speech tokens]   -> prefill, then one token a step

Qwen's own 151936-row lm_head is never computed: only `llm_decoder` (speech vocabulary) is.
Decoding state (KV cache, position, decoded tokens) lives in each generate() call, never on the
module, so concurrent requests can share one model.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cosyvoice.errors import ModelDirError
from cosyvoice.engines.cosyvoice3.config import LLMConfig, ModelConfig, SamplingConfig
from cosyvoice.engines.cosyvoice3.sampling import Sampler, ras_sampler

END_OF_PROMPT_ID = 151646  # <|endofprompt|>: CosyVoice3 requires it somewhere in prompt text ++ text
LLM_FILE = "llm.pt"


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Normalise in float32 whatever the model dtype, then scale in the model dtype (as Qwen2 does).
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class KVCache:
    """Keys/values of every layer for one request: (layers, 1, kv_heads, capacity, head_dim)."""

    def __init__(self, cfg: LLMConfig, capacity: int, dtype: torch.dtype, device: torch.device):
        shape = (cfg.num_layers, 1, cfg.num_kv_heads, capacity, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0  # positions filled

    def reserve(self, total: int) -> None:
        capacity = self.k.shape[3]
        if total <= capacity:
            return
        grown = max(total, 2 * capacity)
        for name in ("k", "v"):
            old = getattr(self, name)
            new = old.new_zeros(*old.shape[:3], grown, old.shape[4])
            new[:, :, :, :capacity] = old
            setattr(self, name, new)


def rope_inv_freq(cfg: LLMConfig, device: torch.device | str = "cpu") -> Tensor:
    # Same float32 expression as transformers' default RoPE, so angles match bit for bit.
    exponents = torch.arange(0, cfg.head_dim, 2, dtype=torch.int64, device=device).float() / cfg.head_dim
    return 1.0 / (cfg.rope_theta ** exponents)  # (head_dim/2,)


def rope_tables(inv_freq: Tensor, start: int, length: int) -> tuple[Tensor, Tensor]:
    positions = torch.arange(start, start + length, device=inv_freq.device).float()
    angles = positions[:, None] * inv_freq[None, :]        # (T, head_dim/2)
    angles = torch.cat([angles, angles], dim=-1)           # (T, head_dim): halves layout, not interleaved
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    # x: (B, heads, T, head_dim); rotate the first half against the second half.
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        q_size, kv_size = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.qkv = nn.Linear(cfg.hidden_size, q_size + 2 * kv_size, bias=True)  # q, k, v fused: one matmul
        self.out = nn.Linear(q_size, cfg.hidden_size, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache, layer: int) -> Tensor:
        batch, length, _ = x.shape
        start = cache.length
        n_qk = self.num_heads + self.num_kv_heads
        heads = self.qkv(x).view(batch, length, n_qk + self.num_kv_heads, self.head_dim).transpose(1, 2)
        qk = apply_rope(heads[:, :n_qk], cos, sin)  # q and k heads rotated together: half the small ops per step
        q, k = qk[:, :self.num_heads], qk[:, self.num_heads:]                   # (B, H, T, D), (B, Hkv, T, D)
        v = heads[:, n_qk:]                                                      # (B, Hkv, T, D)

        end = start + length
        cache.k[layer, :, :, start:end] = k
        cache.v[layer, :, :, start:end] = v
        keys, values = cache.k[layer, :, :, :end], cache.v[layer, :, :, :end]   # (B, Hkv, S, D)
        group = self.num_heads // self.num_kv_heads

        if length == 1:
            # One new position sees every cached one: fold each kv head's query group into the
            # "time" axis instead of repeating keys/values (no copies, no mask).
            q = q.reshape(batch, self.num_kv_heads, group, self.head_dim)
            out = F.scaled_dot_product_attention(q, keys, values)               # (B, Hkv, group, D)
            out = out.reshape(batch, 1, self.num_heads * self.head_dim)
        else:
            keys = keys.repeat_interleave(group, dim=1)                            # (B, H, S, D)
            values = values.repeat_interleave(group, dim=1)
            if start == 0:
                out = F.scaled_dot_product_attention(q, keys, values, is_causal=True)
            else:
                allowed = torch.ones(length, end, dtype=torch.bool, device=x.device).tril(diagonal=start)
                out = F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed)
            out = out.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim)
        return self.out(out)


class MLP(nn.Module):
    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.intermediate_size = cfg.intermediate_size
        self.gate_up = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)  # gate, up fused
        self.down = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).split(self.intermediate_size, dim=-1)
        return self.down(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache, layer: int) -> Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, cache, layer)
        return x + self.mlp(self.mlp_norm(x))


class CosyVoice3LM(nn.Module):
    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.cfg = cfg
        # Tables are left uninitialised: every weight comes from llm.pt (and random init of the
        # 151936-row table would cost time for nothing).
        self.embed_tokens = nn.Embedding(cfg.text_vocab_size, cfg.hidden_size,
                                         _weight=torch.empty(cfg.text_vocab_size, cfg.hidden_size))
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.speech_embedding = nn.Embedding(cfg.speech_vocab_size, cfg.hidden_size,
                                             _weight=torch.empty(cfg.speech_vocab_size, cfg.hidden_size))
        self.llm_decoder = nn.Linear(cfg.hidden_size, cfg.speech_vocab_size, bias=False)
        self.register_buffer("rope_inv_freq", rope_inv_freq(cfg), persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.speech_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.speech_embedding.weight.device

    def new_cache(self, capacity: int) -> KVCache:
        return KVCache(self.cfg, capacity, self.dtype, self.device)

    def forward_logits(self, embeds: Tensor, cache: KVCache) -> Tensor:
        """Run `embeds` (1, T, H) after what `cache` holds; logits of the last position, (1, V_speech)."""
        length = embeds.shape[1]
        cache.reserve(cache.length + length)
        cos, sin = rope_tables(self.rope_inv_freq, cache.length, length)
        cos, sin = cos.to(embeds.dtype), sin.to(embeds.dtype)
        x = embeds
        for index, layer in enumerate(self.layers):
            x = layer(x, cos, sin, cache, index)
        cache.length += length
        hidden = self.norm(x[:, -1])                     # (1, H): only the last position is decoded
        return self.llm_decoder(hidden)

    def prefill_embeddings(self, text_ids: Tensor, prompt_text_ids: Tensor, prompt_speech_tokens: Tensor) -> Tensor:
        """[sos, prompt text ++ text, task_id, prompt speech] as one (1, L, H) sequence."""
        cfg, table = self.cfg, self.speech_embedding.weight
        text = torch.cat([prompt_text_ids, text_ids], dim=1).long().to(self.device)
        speech = prompt_speech_tokens.long().to(self.device)
        return torch.cat([
            table[cfg.sos_id].view(1, 1, -1),
            self.embed_tokens(text),
            table[cfg.task_id].view(1, 1, -1),
            self.speech_embedding(speech),
        ], dim=1)

    def generate(self, text_ids: Tensor, prompt_text_ids: Tensor, prompt_speech_tokens: Tensor, *,
                 sampling: SamplingConfig, min_token_text_ratio: float = 2.0, max_token_text_ratio: float = 20.0,
                 generator: torch.Generator | None = None, sampler: Sampler | None = None,
                 on_logits: Callable[[Tensor], None] | None = None) -> Iterator[int]:
        """Yield speech token ids until a stop id (not yielded) or the length limit.

        Shapes: text_ids (1, T), prompt_text_ids (1, Tp), prompt_speech_tokens (1, P) (Tp, P may be 0).
        `sampler(logp, decoded, generator)` replaces RAS (e.g. for greedy or forced decoding);
        `on_logits` sees each step's raw head output (V_speech,) before any masking.
        """
        for name, ids in (("text_ids", text_ids), ("prompt_text_ids", prompt_text_ids),
                          ("prompt_speech_tokens", prompt_speech_tokens)):
            if ids.dim() != 2 or ids.shape[0] != 1:
                raise ValueError(f"{name} must have shape (1, N), got {tuple(ids.shape)}")
        if not (bool((text_ids == END_OF_PROMPT_ID).any()) or bool((prompt_text_ids == END_OF_PROMPT_ID).any())):
            raise ValueError("CosyVoice3 needs <|endofprompt|> (id 151646) in the prompt text or the text")
        if prompt_speech_tokens.numel() and int(prompt_speech_tokens.max()) >= self.cfg.speech_token_size:
            raise ValueError("prompt_speech_tokens holds ids outside the speech vocabulary")
        min_len, max_len = decode_length_limits(text_ids.shape[1], min_token_text_ratio, max_token_text_ratio)
        pick = sampler if sampler is not None else ras_sampler(sampling)
        return self._decode(text_ids, prompt_text_ids, prompt_speech_tokens, min_len, max_len,
                            pick, generator, on_logits)

    @torch.inference_mode()
    def _decode(self, text_ids: Tensor, prompt_text_ids: Tensor, prompt_speech_tokens: Tensor,
                min_len: int, max_len: int, pick: Sampler, generator: torch.Generator | None,
                on_logits: Callable[[Tensor], None] | None) -> Iterator[int]:
        embeds = self.prefill_embeddings(text_ids, prompt_text_ids, prompt_speech_tokens)
        cache = self.new_cache(embeds.shape[1] + min(max_len, 512))
        decoded: list[int] = []
        for step in range(max_len):
            logits = self.forward_logits(embeds, cache)[0]          # (V_speech,)
            if on_logits is not None:
                on_logits(logits)
            logp = logits.float().log_softmax(dim=-1)
            if step < min_len:
                # Released behaviour, kept on purpose: the min-length mask blocks id speech_token_size,
                # which in CosyVoice3 is *sos*, not eos (it was eos in CosyVoice2). So eos and the other
                # stop ids can still end decoding before min_len.
                logp[self.cfg.sos_id] = -float("inf")
            token = int(pick(logp, decoded, generator))
            if self.cfg.is_stop(token):
                return
            yield token
            decoded.append(token)
            embeds = self.speech_embedding.weight[token].view(1, 1, -1)


def decode_length_limits(text_len: int, min_ratio: float, max_ratio: float) -> tuple[int, int]:
    """(min_len, max_len) from the text length (prompt text excluded).

    Computed like the released code: an int32 length tensor times a python float gives float32,
    then int() truncates; float64 could round differently for some ratios.
    """
    length = torch.tensor([text_len], dtype=torch.int32)
    return int(length * min_ratio), int(length * max_ratio)


# ---------------------------------------------------------------------------------------------
# Loading


def _checkpoint_layout(cfg: LLMConfig) -> dict[str, tuple[int, ...]]:
    """Every key llm.pt must hold, with its shape, in the official naming."""
    h, hd, i = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
    q, kv = cfg.num_heads * hd, cfg.num_kv_heads * hd
    qwen = "llm.model.model."
    layout = {f"{qwen}embed_tokens.weight": (cfg.text_vocab_size, h)}
    for n in range(cfg.num_layers):
        p = f"{qwen}layers.{n}."
        layout.update({
            f"{p}self_attn.q_proj.weight": (q, h), f"{p}self_attn.q_proj.bias": (q,),
            f"{p}self_attn.k_proj.weight": (kv, h), f"{p}self_attn.k_proj.bias": (kv,),
            f"{p}self_attn.v_proj.weight": (kv, h), f"{p}self_attn.v_proj.bias": (kv,),
            f"{p}self_attn.o_proj.weight": (h, q),
            f"{p}mlp.gate_proj.weight": (i, h), f"{p}mlp.up_proj.weight": (i, h), f"{p}mlp.down_proj.weight": (h, i),
            f"{p}input_layernorm.weight": (h,), f"{p}post_attention_layernorm.weight": (h,),
        })
    layout[f"{qwen}norm.weight"] = (h,)
    layout["llm.model.lm_head.weight"] = (cfg.text_vocab_size, h)  # accepted, never used
    layout["llm_decoder.weight"] = (cfg.speech_vocab_size, h)
    layout["speech_embedding.weight"] = (cfg.speech_vocab_size, h)
    return layout


def _our_params(ckpt: dict[str, Tensor], cfg: LLMConfig, device: str | torch.device,
                dtype: torch.dtype) -> dict[str, Tensor]:
    """Checkpoint tensors renamed (and q/k/v, gate/up concatenated) into this module's names,
    as fresh tensors of `dtype` on `device` (none stays backed by the mapped file)."""
    def own(key: str) -> Tensor:
        return ckpt[key].to(device=device, dtype=dtype, copy=True)

    def joined(keys: list[str]) -> Tensor:
        return torch.cat([ckpt[k].to(device=device, dtype=dtype) for k in keys], dim=0)

    qwen = "llm.model.model."
    params = {
        "embed_tokens.weight": own(f"{qwen}embed_tokens.weight"),
        "norm.weight": own(f"{qwen}norm.weight"),
        "speech_embedding.weight": own("speech_embedding.weight"),
        "llm_decoder.weight": own("llm_decoder.weight"),
    }
    for n in range(cfg.num_layers):
        p, ours = f"{qwen}layers.{n}.", f"layers.{n}."
        params.update({
            f"{ours}attn_norm.weight": own(f"{p}input_layernorm.weight"),
            f"{ours}attn.qkv.weight": joined([f"{p}self_attn.{x}_proj.weight" for x in "qkv"]),
            f"{ours}attn.qkv.bias": joined([f"{p}self_attn.{x}_proj.bias" for x in "qkv"]),
            f"{ours}attn.out.weight": own(f"{p}self_attn.o_proj.weight"),
            f"{ours}mlp_norm.weight": own(f"{p}post_attention_layernorm.weight"),
            f"{ours}mlp.gate_up.weight": joined([f"{p}mlp.gate_proj.weight", f"{p}mlp.up_proj.weight"]),
            f"{ours}mlp.down.weight": own(f"{p}mlp.down_proj.weight"),
        })
    return params


def read_llm_checkpoint(path: Path, cfg: LLMConfig) -> dict[str, Tensor]:
    """llm.pt as a name -> tensor dict, checked key by key against the configuration."""
    name = path.name
    if not path.is_file():
        raise ModelDirError(f"{name}: not found in {path.parent}")
    try:
        # mmap: the released file is ~2 GB; pages are read as tensors are copied, not all up front.
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # truncated zip, pickle garbage, ...: many exception types
        raise ModelDirError(f"{name}: not a readable torch checkpoint (truncated or damaged?): {err}") from err
    if not isinstance(ckpt, dict):
        raise ModelDirError(f"{name}: expected a state_dict (dict of tensors), found {type(ckpt).__name__}")

    layout = _checkpoint_layout(cfg)
    for key, value in ckpt.items():
        if key not in layout:
            raise ModelDirError(f"{name}: unexpected key {key!r}; the file does not belong to a CosyVoice3 LLM "
                                "with this configuration")
        if not isinstance(value, Tensor) or not value.is_floating_point():
            raise ModelDirError(f"{name}: key {key!r} is not a floating-point tensor")
        if tuple(value.shape) != layout[key]:
            raise ModelDirError(f"{name}: key {key!r} has shape {tuple(value.shape)}, expected {layout[key]} "
                                "from cosyvoice3.yaml / CosyVoice-BlankEN/config.json")
    for key, shape in layout.items():
        if key not in ckpt:
            raise ModelDirError(f"{name}: missing key {key!r} of shape {shape}")
    return ckpt


def load_llm(model_dir: str | Path, cfg: ModelConfig, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32) -> CosyVoice3LM:
    """CosyVoice3LM with `<model_dir>/llm.pt` loaded strictly, in eval mode."""
    ckpt = read_llm_checkpoint(Path(model_dir) / LLM_FILE, cfg.llm)
    params = _our_params(ckpt, cfg.llm, device, dtype)
    del ckpt  # lm_head (a tied duplicate of embed_tokens) is dropped with it

    with torch.device("meta"):
        model = CosyVoice3LM(cfg.llm)
    # Every parameter comes from the file: build on meta (no random init), then adopt the tensors.
    model.load_state_dict(params, strict=True, assign=True)
    model.rope_inv_freq = rope_inv_freq(cfg.llm, device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# Weight-only int8


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

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()
        scales = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0            # (out,)
        weight_q = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = _pack_for_fbgemm(weight_q, scales, bias) if weight.device.type == "cpu" else None
        if self.packed is not None:  # the packed copy is the only one kept
            weight_q = scales = bias = None
        self.register_buffer("weight", weight_q)
        self.register_buffer("scales", scales)                                  # float32 (out,)
        self.register_buffer("scales_bf16", None if scales is None else scales.to(torch.bfloat16))
        self.register_buffer("bias", bias)
        self.use_kernel = linear.in_features % 16 == 0

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features)                                  # (M, in)
        if self.packed is not None:
            out = torch.ops.quantized.linear_dynamic(flat.float().contiguous(), self.packed, self.REDUCE_RANGE)
            return out.to(x.dtype).view(*x.shape[:-1], self.out_features)      # bias already added
        if self.use_kernel and flat.shape[0] <= self.KERNEL_MAX_ROWS:
            out = torch.ops.aten._weight_int8pack_mm(flat.to(torch.bfloat16).contiguous(), self.weight,
                                                     self.scales_bf16).to(x.dtype)
        else:
            dense = (self.weight.to(torch.float32) * self.scales[:, None]).to(x.dtype)
            out = F.linear(flat, dense)
        if self.bias is not None:
            out = out + self.bias
        return out.view(*x.shape[:-1], self.out_features)                        # (..., out)


def quantize_int8(model: CosyVoice3LM) -> CosyVoice3LM:
    """Swap every decoder-layer projection and the speech head for Int8Linear, in place.

    Embedding tables stay in the model dtype (only a few rows are read per step)."""
    for layer in model.layers:
        layer.attn.qkv = Int8Linear(layer.attn.qkv)
        layer.attn.out = Int8Linear(layer.attn.out)
        layer.mlp.gate_up = Int8Linear(layer.mlp.gate_up)
        layer.mlp.down = Int8Linear(layer.mlp.down)
    model.llm_decoder = Int8Linear(model.llm_decoder)
    return model
