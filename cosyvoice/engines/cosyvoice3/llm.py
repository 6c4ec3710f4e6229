"""CosyVoice3 speech-token LLM: a Qwen2 decoder run on embeddings, with CosyVoice3's speech
embedding table and output head.

Sequence fed to the decoder for one request (all ids of the speech vocabulary index
`speech_embedding`, text ids index Qwen's `embed_tokens`):

    [sos] [prompt text ++ text] [task_id] [prompt speech tokens]   -> prefill, then one token a step

Qwen's own 151936-row lm_head is never computed: only `llm_decoder` (speech vocabulary) is.
Decoding state (KV cache, position, decoded tokens) lives in each generate() call, never on the
module, so concurrent requests can share one model.

The forward pass has two entry points: `prefill` runs one request's whole prompt sequence into its
cache slot, `decode_rows` runs one new token for each of several requests, each in its own slot at its
own position (`decode_one_token` is the same step for one growing cache, kept for tests and tools).
SlotDecoder drives them for a fixed set of slots; `generate` decodes one request alone on a one-slot
SlotDecoder, and the engine's DecodeScheduler decodes every request in flight on a shared one.
`with_projections` makes the twin of the model whose projections run on other kernels (the batched
CPU decode), sharing every other weight.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cosyvoice.engines.cosyvoice3 import cpu_decode_kernel
from cosyvoice.engines.cosyvoice3.checkpoint import read_llm_params
from cosyvoice.engines.cosyvoice3.config import LLMConfig, SamplingConfig
from cosyvoice.engines.cosyvoice3.devices import Float32Buffers
from cosyvoice.engines.cosyvoice3.sampling import Sampler, ras_sampler
from cosyvoice.errors import EngineError
from cosyvoice.text.special_tokens import END_OF_PROMPT, SPECIAL_TOKEN_IDS

# CosyVoice3 requires <|endofprompt|> somewhere in prompt text ++ text.
END_OF_PROMPT_ID = SPECIAL_TOKEN_IDS[END_OF_PROMPT]


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
    """Keys/values of every layer for one request, (layers, B, kv_heads, capacity, head_dim), and the
    rotary cos/sin rows (capacity, head_dim) for every position it can hold.

    Positions are passed explicitly to the forward calls; the cache only stores. The rotary rows are
    computed once per capacity, so a decode step only slices them.
    """

    def __init__(self, cfg: LLMConfig, capacity: int, dtype: torch.dtype, device: torch.device,
                 inv_freq: Tensor, batch: int = 1):
        shape = (cfg.num_layers, batch, cfg.num_kv_heads, capacity, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.inv_freq = inv_freq
        self.cos, self.sin = rope_tables(inv_freq, 0, capacity, torch.float32)

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    @classmethod
    def view(cls, k: Tensor, v: Tensor, cos: Tensor, sin: Tensor, inv_freq: Tensor) -> "KVCache":
        """A fixed-capacity cache over existing storage (one slot of a SlotCache): writes land there."""
        cache = cls.__new__(cls)
        cache.k, cache.v, cache.cos, cache.sin, cache.inv_freq = k, v, cos, sin, inv_freq
        cache.fixed = True
        return cache

    fixed = False

    def reserve(self, total: int) -> None:
        """Make room for `total` positions (doubling, so growth is rare)."""
        capacity = self.capacity
        if total <= capacity:
            return
        if self.fixed:
            raise ValueError(f"sequence of {total} positions does not fit a slot of {capacity}")
        grown = max(total, 2 * capacity)
        for name in ("k", "v"):
            old = getattr(self, name)
            new = old.new_zeros(*old.shape[:3], grown, old.shape[4])
            new[:, :, :, :capacity] = old
            setattr(self, name, new)
        self.cos, self.sin = rope_tables(self.inv_freq, 0, grown, torch.float32)


class SlotCache:
    """The static keys/values of every decode slot, (layers, slots, kv_heads, capacity, head_dim), allocated
    once: a batched step writes each row at its own position and never reallocates, so its shapes stay fixed.

    zeroed=False leaves the storage uninitialised, so on CPU untouched pages are never mapped and a large
    capacity costs memory only as it is used; that is safe only when every read position was written
    first (per-row exact attention). Masked attention reads every position, so it needs zeroed=True
    (uninitialised NaNs would leak through the zero softmax weights).
    """

    def __init__(self, cfg: LLMConfig, slots: int, capacity: int, dtype: torch.dtype, device: torch.device,
                 inv_freq: Tensor, zeroed: bool = True):
        shape = (cfg.num_layers, slots, cfg.num_kv_heads, capacity, cfg.head_dim)
        alloc = torch.zeros if zeroed else torch.empty
        self.k = alloc(shape, dtype=dtype, device=device)
        self.v = alloc(shape, dtype=dtype, device=device)
        self.inv_freq = inv_freq
        self.cos, self.sin = rope_tables(inv_freq, 0, capacity, torch.float32)     # (capacity, head_dim)
        self.positions = torch.arange(capacity, device=device)              # key index, for masks

    @property
    def slots(self) -> int:
        return self.k.shape[1]

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    def slot(self, index: int) -> KVCache:
        """One slot as a batch-1 KVCache (for its request's prefill)."""
        return KVCache.view(self.k[:, index:index + 1], self.v[:, index:index + 1], self.cos, self.sin,
                            self.inv_freq)


def rope_inv_freq(cfg: LLMConfig, device: torch.device | str = "cpu") -> Tensor:
    # Same float32 expression as transformers' default RoPE, so angles match bit for bit.
    exponents = torch.arange(0, cfg.head_dim, 2, dtype=torch.int64, device=device).float() / cfg.head_dim
    return 1.0 / (cfg.rope_theta ** exponents)  # (head_dim/2,)


def rope_tables(inv_freq: Tensor, start: int, length: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos, sin (T, head_dim) of positions start..start+T-1, computed in float32, returned in `dtype`."""
    positions = torch.arange(start, start + length, device=inv_freq.device).float()
    angles = positions[:, None] * inv_freq[None, :]        # (T, head_dim/2)
    angles = torch.cat([angles, angles], dim=-1)           # (T, head_dim): halves layout, not interleaved
    return angles.cos().to(dtype), angles.sin().to(dtype)


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
        # nn.Module: the int8 and batched-decode variants replace these projections (quantize, scheduler).
        self.qkv: nn.Module = nn.Linear(cfg.hidden_size, q_size + 2 * kv_size, bias=True)  # q, k, v fused
        self.out: nn.Module = nn.Linear(q_size, cfg.hidden_size, bias=False)

    def forward(self, x: Tensor, start: int, cos: Tensor, sin: Tensor, cache: KVCache, layer: int) -> Tensor:
        """x (B, T, H) at positions start..start+T-1; cos/sin (T, head_dim) of those positions."""
        batch, length, _ = x.shape
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


    def decode_rows(self, x: Tensor, cos: Tensor, sin: Tensor, cache: SlotCache, layer: int, rows: "DecodeRows") -> Tensor:
        """One new token per row: x (M, 1, H), row i of slot rows.slots[i] at position rows.positions[i].

        Each row attends to its own slot only, so a row's result never depends on the other rows:
        per row over its exact prefix (rows.exact, the same call as a lone decode step), or, for fixed
        shapes (CUDA graphs), all slots at once over the whole cache with a per-row mask.
        """
        rows_n = x.shape[0]
        n_qk = self.num_heads + self.num_kv_heads
        heads = self.qkv(x).view(rows_n, 1, n_qk + self.num_kv_heads, self.head_dim).transpose(1, 2)
        qk = apply_rope(heads[:, :n_qk], cos, sin)                             # cos/sin (M, 1, 1, D)
        q, k = qk[:, :self.num_heads], qk[:, self.num_heads:]                   # (M, H, 1, D), (M, Hkv, 1, D)
        v = heads[:, n_qk:]
        # (M, Hkv, D) at own positions, in the cache's dtype (half on CUDA, where rope left k float32)
        cache.k[layer, rows.slots, :, rows.positions] = k[:, :, 0].to(cache.k.dtype)
        cache.v[layer, rows.slots, :, rows.positions] = v[:, :, 0].to(cache.v.dtype)
        group = self.num_heads // self.num_kv_heads
        q = q.reshape(rows_n, self.num_kv_heads, group, self.head_dim)         # query groups as "time"
        if rows.ends_tensor is not None:          # rows.fused
            # Every row against its own slot in one call (csrc/cpu_decode_kernel.cpp): the per-row loop
            # below costs ~1.5 ms per request per step in small-op overhead.
            out = cpu_decode_kernel.rows_attention(q * self.head_dim ** -0.5, cache.k[layer], cache.v[layer],
                                                   rows.slots, rows.ends_tensor)
        elif rows.exact:
            # Plain matmul/softmax per row: for one query row CPU's flash SDPA costs milliseconds of
            # set-up per call, paid once per request per layer, which would eat the batching gain.
            q = q * self.head_dim ** -0.5
            out = torch.stack([
                torch.matmul(torch.matmul(q[i], cache.k[layer, slot, :, :end].transpose(1, 2))
                             .float().softmax(dim=-1).to(q.dtype), cache.v[layer, slot, :, :end])
                for i, (slot, end) in enumerate(zip(rows.slot_list, rows.ends))])   # (M, Hkv, group, D)
        else:
            # rows are all slots in order: keys (S, Hkv, C, D), mask (S, 1, 1, C) = key <= own position
            visible = (cache.positions[None, :] <= rows.positions[:, None])[:, None, None]
            out = F.scaled_dot_product_attention(q, cache.k[layer], cache.v[layer], attn_mask=visible)
        return self.out(out.reshape(rows_n, 1, self.num_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.intermediate_size = cfg.intermediate_size
        self.gate_up: nn.Module = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)  # fused
        self.down: nn.Module = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

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

    def forward(self, x: Tensor, start: int, cos: Tensor, sin: Tensor, cache: KVCache, layer: int) -> Tensor:
        x = x + self.attn(self.attn_norm(x), start, cos, sin, cache, layer)
        return x + self.mlp(self.mlp_norm(x))

    def decode_rows(self, x: Tensor, cos: Tensor, sin: Tensor, cache: SlotCache, layer: int, rows: "DecodeRows") -> Tensor:
        x = x + self.attn.decode_rows(self.attn_norm(x), cos, sin, cache, layer, rows)
        return x + self.mlp(self.mlp_norm(x))


@dataclass
class DecodeRows:
    """Which slots one batched step decodes: slots, positions (M,) long tensors on the model's device;
    exact=True also carries them as python ints (per-row attention slices by them); fused=True runs
    that per-row attention as one kernel call per layer (cpu_decode_kernel.rows_attention)."""
    slots: Tensor
    positions: Tensor
    exact: bool
    slot_list: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)          # position + 1: keys each row sees
    ends_tensor: Tensor | None = None                      # the same on the device, for the fused kernel

    @property
    def fused(self) -> bool:
        return self.ends_tensor is not None

    @classmethod
    def of(cls, slots: list[int], positions: list[int], device: torch.device, exact: bool,
           fused: bool = False) -> "DecodeRows":
        ends = [p + 1 for p in positions]
        return cls(torch.tensor(slots, device=device), torch.tensor(positions, device=device), exact,
                   list(slots), ends, torch.tensor(ends, device=device) if fused else None)


class CosyVoice3LM(Float32Buffers, nn.Module):
    float32_buffers = ("rope_inv_freq",)    # rotary angles stay float32 whatever dtype the weights take
    rope_inv_freq: Tensor                   # a buffer, declared so its type is known

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
        self.llm_decoder: nn.Module = nn.Linear(cfg.hidden_size, cfg.speech_vocab_size, bias=False)
        self.register_buffer("rope_inv_freq", rope_inv_freq(cfg), persistent=False)

    def decoder_layers(self) -> list[DecoderLayer]:
        """The layers, typed: a type checker sees nn.ModuleList's items as plain Modules."""
        return [cast(DecoderLayer, layer) for layer in self.layers]

    @property
    def dtype(self) -> torch.dtype:
        return self.speech_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.speech_embedding.weight.device

    @property
    def kv_dtype(self) -> torch.dtype:
        """Keys/values are stored in the projections' dtype (half on CUDA, see devices.half_projections)."""
        weight = getattr(self.decoder_layers()[0].attn.qkv, "weight", None)
        return weight.dtype if weight is not None and weight.is_floating_point() else self.dtype

    def projections(self) -> list[tuple[nn.Module, str]]:
        """(parent, attribute) of every matmul weight: the layers' qkv, out, gate_up, down and the speech head."""
        found: list[tuple[nn.Module, str]] = []
        for layer in self.decoder_layers():
            found += [(layer.attn, "qkv"), (layer.attn, "out"), (layer.mlp, "gate_up"), (layer.mlp, "down")]
        return found + [(self, "llm_decoder")]

    def with_projections(self, make: Callable[[nn.Module], nn.Module]) -> "CosyVoice3LM":
        """A twin of this model sharing every parameter and buffer, with each projection p replaced by
        make(p); this model is left as it is."""
        shared = {id(t): t for t in [*self.parameters(), *self.buffers()]}
        twin = copy.deepcopy(self, memo=shared)           # modules copied, tensors shared
        for parent, name in twin.projections():
            setattr(parent, name, make(getattr(parent, name)))
        return twin

    def new_cache(self, capacity: int, batch: int = 1) -> KVCache:
        return KVCache(self.cfg, capacity, self.kv_dtype, self.device, self.rope_inv_freq, batch)

    def _forward(self, x: Tensor, start: int, cache: KVCache) -> Tensor:
        """Decoder over x (B, T, H) at positions start..start+T-1; logits of the last position (B, V_speech)."""
        end = start + x.shape[1]
        cos, sin = cache.cos[start:end], cache.sin[start:end]
        for index, layer in enumerate(self.layers):
            x = layer(x, start, cos, sin, cache, index)
        return self.llm_decoder(self.norm(x[:, -1]))    # only the last position is decoded

    def prefill(self, embeds: Tensor, cache: KVCache, start: int = 0) -> Tensor:
        """Run the prompt sequence embeds (B, L, H) from position `start`; logits (B, V_speech) of its last position."""
        cache.reserve(start + embeds.shape[1])
        return self._forward(embeds, start, cache)

    def decode_one_token(self, tokens: Tensor, position: int, cache: KVCache) -> Tensor:
        """tokens (B, 1) speech ids at `position` (every earlier position cached) -> logits (B, V_speech).

        Allocates nothing per step beyond the activations: the rotary rows are slices of the cache's
        table and keys/values are written in place (the cache only grows, by doubling, when full).
        """
        cache.reserve(position + 1)
        return self._forward(self.speech_embedding(tokens), position, cache)

    def new_slot_cache(self, slots: int, capacity: int, zeroed: bool = True) -> SlotCache:
        return SlotCache(self.cfg, slots, capacity, self.kv_dtype, self.device, self.rope_inv_freq, zeroed)

    def decode_rows(self, tokens: Tensor, rows: DecodeRows, cache: SlotCache) -> Tensor:
        """tokens (M, 1): the last speech id of each row's request -> logits (M, V_speech).

        The batched form of decode_one_token: M requests, each in its own slot at its own position."""
        cos = cache.cos[rows.positions][:, None, None]                     # (M, 1, 1, D)
        sin = cache.sin[rows.positions][:, None, None]
        x = self.speech_embedding(tokens)                                   # (M, 1, H)
        for index, layer in enumerate(self.decoder_layers()):
            x = layer.decode_rows(x, cos, sin, cache, index, rows)
        return self.llm_decoder(self.norm(x[:, -1]))

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
        Runs here, in the caller's thread, on a one-slot SlotDecoder (the engine's scheduler runs the
        same steps for many requests).
        """
        request = self.decode_request(text_ids, prompt_text_ids, prompt_speech_tokens, sampling=sampling,
                                      min_token_text_ratio=min_token_text_ratio,
                                      max_token_text_ratio=max_token_text_ratio, generator=generator,
                                      sampler=sampler, on_logits=on_logits)
        return self._decode_alone(request)

    def decode_request(self, text_ids: Tensor, prompt_text_ids: Tensor, prompt_speech_tokens: Tensor, *,
                       sampling: SamplingConfig, min_token_text_ratio: float = 2.0,
                       max_token_text_ratio: float = 20.0, generator: torch.Generator | None = None,
                       sampler: Sampler | None = None,
                       on_logits: Callable[[Tensor], None] | None = None) -> "DecodeRequest":
        """Check the inputs and build one request's prefill sequence and sampling state (see generate)."""
        for name, ids in (("text_ids", text_ids), ("prompt_text_ids", prompt_text_ids),
                          ("prompt_speech_tokens", prompt_speech_tokens)):
            if ids.dim() != 2 or ids.shape[0] != 1:
                raise ValueError(f"{name} must have shape (1, N), got {tuple(ids.shape)}")
        if not (bool((text_ids == END_OF_PROMPT_ID).any()) or bool((prompt_text_ids == END_OF_PROMPT_ID).any())):
            raise ValueError(f"CosyVoice3 needs {END_OF_PROMPT} (id {END_OF_PROMPT_ID}) in the prompt text or the text")
        if prompt_speech_tokens.numel() and int(prompt_speech_tokens.max()) >= self.cfg.speech_token_size:
            raise ValueError("prompt_speech_tokens holds ids outside the speech vocabulary")
        min_len, max_len = decode_length_limits(text_ids.shape[1], min_token_text_ratio, max_token_text_ratio)
        with torch.inference_mode():
            embeds = self.prefill_embeddings(text_ids, prompt_text_ids, prompt_speech_tokens)
        return DecodeRequest(self.cfg, embeds, min_len, max_len,
                             sampler if sampler is not None else ras_sampler(sampling), generator, on_logits)

    def _decode_alone(self, request: "DecodeRequest") -> Iterator[int]:
        decoder = SlotDecoder(self, slots=1, capacity=request.prefill_len + request.max_len, exact=True)
        with torch.inference_mode():
            token = decoder.admit(request, 0)
        while token is not None:
            yield token
            if request.finished:
                return
            with torch.inference_mode():
                outcome = decoder.step()[0]
            if isinstance(outcome, Exception):
                raise outcome
            token = outcome


class DecodeRequest:
    """One request's decoding state: its prefill sequence (1, L, H), length limits, sampler and seeded
    generator, and the tokens decoded so far. `choose` turns one step's logits into the next id."""

    def __init__(self, cfg: LLMConfig, embeds: Tensor, min_len: int, max_len: int, pick: Sampler,
                 generator: torch.Generator | None, on_logits: Callable[[Tensor], None] | None = None):
        self.cfg, self.embeds, self.min_len, self.max_len = cfg, embeds, min_len, max_len
        self.pick, self.generator, self.on_logits = pick, generator, on_logits
        self.decoded: list[int] = []
        self.finished = max_len <= 0

    @property
    def prefill_len(self) -> int:
        return self.embeds.shape[1]

    @property
    def next_position(self) -> int:
        """Where the last decoded token goes when it is fed back."""
        return self.prefill_len + len(self.decoded) - 1

    def choose(self, logits: Tensor) -> int | None:
        """logits (V_speech,) -> the next id, or None when this request stops here."""
        if self.on_logits is not None:
            self.on_logits(logits)
        logp = logits.float().log_softmax(dim=-1)
        if len(self.decoded) < self.min_len:
            # Released behaviour, kept on purpose: the min-length mask blocks id speech_token_size,
            # which in CosyVoice3 is *sos*, not eos (it was eos in CosyVoice2). So eos and the other
            # stop ids can still end decoding before min_len.
            logp[self.cfg.sos_id] = -float("inf")
        token = int(self.pick(logp, self.decoded, self.generator))
        if self.cfg.is_stop(token):
            self.finished = True
            return None
        self.decoded.append(token)
        self.finished = len(self.decoded) >= self.max_len
        return token


class SlotDecoder:
    """Requests decoded together in a fixed number of slots of one static SlotCache.

    admit() prefills a request into a free slot (alone, so its prefill never depends on other requests)
    and picks its first token; step() decodes one token for every busy slot at once.

    exact=True: per-row attention over each row's exact prefix; exact=False: all slots over the whole
    cache with per-row masks (fixed shapes, for CUDA graph capture; needs compact=False).
    compact=True: only busy slots are computed, so a lone request pays nothing for empty slots; this is
    batch-invariant only when the projections give a row the same result whatever the row count
    (the scheduler checks its kernels for that). compact=False: every step computes all slots, padded.
    fused_attention=True (with exact): the per-row attention runs as one rows-kernel call per layer
    (needs cpu_decode_kernel.load_rows_kernel()).
    """

    def __init__(self, llm: "CosyVoice3LM", slots: int, capacity: int, exact: bool = True,
                 compact: bool = True, step_fn: Callable[[Tensor, DecodeRows], Tensor] | None = None,
                 fused_attention: bool = False):
        if not exact and compact:
            raise ValueError("masked attention over all slots needs compact=False")
        if fused_attention and not exact:
            raise ValueError("the fused attention kernel is the exact per-row attention; it needs exact=True")
        self.llm, self.exact, self.compact, self.fused_attention = llm, exact, compact, fused_attention
        self.cache = llm.new_slot_cache(slots, capacity, zeroed=not exact)
        self.requests: list[DecodeRequest | None] = [None] * slots
        self.step_fn = step_fn or (lambda tokens, rows: llm.decode_rows(tokens, rows, self.cache))

    @property
    def slots(self) -> int:
        return len(self.requests)

    @property
    def capacity(self) -> int:
        return self.cache.capacity

    def free_slots(self) -> list[int]:
        return [i for i, r in enumerate(self.requests) if r is None]

    def busy(self) -> bool:
        return any(r is not None for r in self.requests)

    def release(self, slot: int) -> None:
        self.requests[slot] = None

    def admit(self, request: DecodeRequest, slot: int) -> int | None:
        """Prefill `request` into free `slot`; its first token, or None when it stopped at once."""
        if self.requests[slot] is not None:
            raise RuntimeError(f"slot {slot} is busy")
        room = self.capacity - request.prefill_len
        if room < 1:
            raise ValueError(f"the prompt and text take {request.prefill_len} LLM positions; "
                             f"at most {self.capacity - 1} fit")
        request.max_len = min(request.max_len, room)   # the static cache bounds the new tokens too
        if request.finished or request.max_len <= 0:
            return None
        logits = self.llm.prefill(request.embeds, self.cache.slot(slot))[0]
        if not bool(torch.isfinite(logits).all()):
            raise non_finite_error(request)
        token = request.choose(logits)
        if token is not None and not request.finished:
            self.requests[slot] = request
        return token

    def step(self, skip: frozenset[int] = frozenset()) -> dict[int, int | None | EngineError]:
        """One token for every busy slot not in `skip`: {slot: token, None when that request stopped, or
        the EngineError that ended it (non-finite scores: only that request fails)}.
        A stopped, failed or finished request leaves its slot at once. A skipped request keeps its state; in the
        padded modes its row is still computed (fixed shapes) and rewrites the same cache entry the
        next real step writes, but nothing is sampled."""
        busy = [i for i, r in enumerate(self.requests) if r is not None and i not in skip]
        if not busy:
            return {}
        rows = busy if self.compact else list(range(self.slots))
        requests = [self.requests[i] for i in rows]
        last = [request.decoded[-1] if request is not None else 0 for request in requests]
        positions = [request.next_position if request is not None else 0 for request in requests]
        device = self.llm.device
        tokens = torch.tensor(last, dtype=torch.long, device=device)[:, None]
        logits = self.step_fn(tokens, DecodeRows.of(rows, positions, device, self.exact, self.fused_attention))
        finite = torch.isfinite(logits).all(dim=-1).tolist()      # one device->host copy for every row
        out: dict[int, int | None | EngineError] = {}
        for index, slot in enumerate(rows):
            request = self.requests[slot]
            if request is None or slot in skip:
                continue
            token = request.choose(logits[index]) if finite[index] else non_finite_error(request)
            out[slot] = token
            if not isinstance(token, int) or request.finished:
                self.requests[slot] = None
        return out


def non_finite_error(request: DecodeRequest) -> EngineError:
    return EngineError(f"The speech-token model produced non-finite scores (inf/NaN) after {len(request.decoded)} "
                       "tokens; this request was stopped, the others go on. Try again with another seed, or start "
                       "the server with --precision fp32.", stage="llm")


def decode_length_limits(text_len: int, min_ratio: float, max_ratio: float) -> tuple[int, int]:
    """(min_len, max_len) from the text length (prompt text excluded).

    Computed like the released code: an int32 length tensor times a python float gives float32,
    then int() truncates; float64 could round differently for some ratios.
    """
    length = torch.tensor([text_len], dtype=torch.int32)
    return int(length * min_ratio), int(length * max_ratio)


# ---------------------------------------------------------------------------------------------
# Loading


def load_llm(weights: str | Path, cfg: LLMConfig, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32) -> CosyVoice3LM:
    """CosyVoice3LM with the checkpoint file `weights` (llm.pt of a model dir) loaded strictly, in eval mode."""
    params = read_llm_params(Path(weights), cfg, device, dtype)
    with torch.device("meta"):
        model = CosyVoice3LM(cfg)
    # Every parameter comes from the file: build on meta (no random init), then adopt the tensors.
    model.load_state_dict(params, strict=True, assign=True)
    model.rope_inv_freq = rope_inv_freq(cfg, device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()
