"""The diffusion transformer that predicts the flow-matching velocity of CosyVoice3's mel decoder.

Input per frame: noisy mel x, prompt-mel condition, token features mu and the speaker vector; the
diffusion time t enters through adaptive LayerNorm modulation in every block. Layout inside the
model is (batch, frames, channels); the public forward takes and returns channels-first tensors
like the rest of the flow code.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cosyvoice.engines.cosyvoice3.config import DiTConfig
from cosyvoice.engines.cosyvoice3.devices import Float32Buffers
from cosyvoice.errors import ModelDirError

TIME_FEATURES = 256     # sinusoid size fed to the time MLP
TIME_SCALE = 1000.0     # t in [0, 1] is stretched to [0, 1000] before the sinusoid
POS_CONV_KERNEL = 31
POS_CONV_GROUPS = 16
NORM_EPS = 1e-6
ROPE_BASE = 10000.0


def time_features(t: Tensor, size: int = TIME_FEATURES) -> Tensor:
    """(B,) diffusion times -> (B, size) [sin | cos] features of 1000 t."""
    half = size // 2
    step = math.log(10000.0) / (half - 1)
    rates = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * -step)
    angles = TIME_SCALE * t.unsqueeze(1) * rates.unsqueeze(0)
    return torch.cat((angles.sin(), angles.cos()), dim=-1).to(t.dtype)


class TimeEmbedding(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc_in = nn.Linear(TIME_FEATURES, dim)
        self.fc_out = nn.Linear(dim, dim)

    def forward(self, t: Tensor) -> Tensor:
        return self.fc_out(F.silu(self.fc_in(time_features(t))))   # (B, dim)


class CausalPositionConv(nn.Module):
    """Two grouped convolutions that only look back (30 frames each), Mish after each."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(dim, dim, POS_CONV_KERNEL, groups=POS_CONV_GROUPS)
        self.conv2 = nn.Conv1d(dim, dim, POS_CONV_KERNEL, groups=POS_CONV_GROUPS)

    def forward(self, x: Tensor) -> Tensor:
        h = x.transpose(1, 2)                                   # (B, dim, T)
        h = F.mish(self.conv1(F.pad(h, (POS_CONV_KERNEL - 1, 0))))
        h = F.mish(self.conv2(F.pad(h, (POS_CONV_KERNEL - 1, 0))))
        return h.transpose(1, 2)                                # (B, T, dim)

    def forward_after(self, x: Tensor, past_in: Tensor, past_mid: Tensor) -> tuple[Tensor, Tensor]:
        """The same for new frames x (B, n, dim) that follow earlier ones: past_in / past_mid hold the
        last <= 30 inputs and first-conv outputs before them (fewer at the sequence start, where the
        full pass pads with zeros too). Returns (output (B, n, dim), first-conv output (B, n, dim))."""
        context = POS_CONV_KERNEL - 1
        h = torch.cat((past_in, x), dim=1).transpose(1, 2)     # (B, dim, L + n), L <= 30
        mid = F.mish(self.conv1(F.pad(h, (context - past_in.shape[1], 0))))             # (B, dim, n)
        m = torch.cat((past_mid.transpose(1, 2), mid), dim=2)
        out = F.mish(self.conv2(F.pad(m, (context - past_mid.shape[1], 0))))           # (B, dim, n)
        return out.transpose(1, 2), mid.transpose(1, 2)


class InputEmbedding(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.proj = nn.Linear(2 * cfg.mel_dim + cfg.mu_dim + cfg.spk_dim, cfg.dim)
        self.pos_conv = CausalPositionConv(cfg.dim)

    def forward(self, x: Tensor, cond: Tensor, mu: Tensor, spks: Tensor) -> Tensor:
        # x, cond: (B, T, mel); mu: (B, T, mu_dim); spks: (B, spk_dim); the order of the concat matters
        frames = x.shape[1]
        h = self.proj(torch.cat((x, cond, mu, spks.unsqueeze(1).expand(-1, frames, -1)), dim=-1))
        return h + self.pos_conv(h)                              # (B, T, dim)

    def forward_after(self, x: Tensor, cond: Tensor, mu: Tensor, spks: Tensor,
                      past: "StepCache") -> tuple[Tensor, Tensor, Tensor]:
        """New frames only (see CausalPositionConv.forward_after): (embedding, projection, first-conv output)."""
        frames = x.shape[1]
        h = self.proj(torch.cat((x, cond, mu, spks.unsqueeze(1).expand(-1, frames, -1)), dim=-1))
        pos, mid = self.pos_conv.forward_after(h, past.proj_tail, past.conv_tail)
        return h + pos, h, mid


def rotary_rows(inv_freq: Tensor, start: int, end: int) -> tuple[Tensor, Tensor]:
    """(cos, sin), each (end - start, dim_head/2) float32, of frame positions start..end-1."""
    angles = torch.outer(torch.arange(start, end, device=inv_freq.device).float(), inv_freq.float())
    return angles.cos(), angles.sin()


def block_causal_mask(first: int, frames: int, block: int, device: torch.device) -> Tensor:
    """(frames - first, frames) additive mask of query frames first..frames-1 over key frames 0..frames-1:
    query i sees key j iff j < (i // block + 1) * block."""
    queries = torch.arange(first, frames, device=device)
    keys = torch.arange(frames, device=device)
    visible = keys.unsqueeze(0) < ((queries // block + 1) * block).unsqueeze(1)
    return torch.zeros(frames - first, frames, device=device).masked_fill_(~visible, float("-inf"))


@dataclass
class FrameTables:
    """What depends only on the sequence length: built once per solve, shared by all steps and blocks."""
    cos: Tensor             # (T, dim_head/2) rotary cos of position * frequency, float32
    sin: Tensor
    mask: Tensor | None     # (T, T) additive attention mask (0 / -inf) when streaming, else None

    @classmethod
    def build(cls, inv_freq: Tensor, frames: int, block: int | None) -> "FrameTables":
        mask = None if block is None else block_causal_mask(0, frames, block, inv_freq.device)
        return cls(*rotary_rows(inv_freq, 0, frames), mask)


@dataclass
class StepCache:
    """What the frames solved so far leave for later ones at one solver step: every block's rotated
    keys and values, and the last inputs of the two causal position convolutions. Under block-causal
    attention a finished block never looks at later frames, so none of this changes when frames
    are appended.

    Keys/values live in buffers with room to grow (time-major, as the projection lays them out), so
    a chunk writes only its own rows. `shared` buffers (a voice's prompt prefix, the start of every
    stream with that voice) are never written: the first write copies them into buffers of its own.
    """
    keys: list[Tensor]       # depth x (B, capacity, H, Dh); rows 0..frames-1 are filled
    values: list[Tensor]
    frames: int
    proj_tail: Tensor        # (B, <=30, dim) input projections of the last frames
    conv_tail: Tensor        # (B, <=30, dim) first position-conv outputs of the last frames
    shared: bool = False

    @classmethod
    def empty(cls, cfg: DiTConfig, batch: int, dtype: torch.dtype, device: torch.device) -> "StepCache":
        none = torch.zeros(batch, 0, cfg.heads, cfg.dim_head, dtype=dtype, device=device)
        tail = torch.zeros(batch, 0, cfg.dim, dtype=dtype, device=device)
        return cls([none] * cfg.depth, [none] * cfg.depth, 0, tail, tail, shared=True)

    def share(self) -> "StepCache":
        """A view of the same frames for another stream (both may read; neither writes these buffers)."""
        self.shared = True
        return StepCache(self.keys, self.values, self.frames, self.proj_tail, self.conv_tail, shared=True)

    def reserve(self, total: int) -> None:
        """Make rows up to `total` writable in buffers of our own (growing by doubling)."""
        capacity = self.keys[0].shape[1]
        if total <= capacity and not self.shared:
            return
        capacity = max(total, 2 * capacity)

        def grown(old: Tensor) -> Tensor:
            new = old.new_empty(old.shape[0], capacity, *old.shape[2:])
            new[:, :self.frames] = old[:, :self.frames]
            return new

        self.keys = [grown(k) for k in self.keys]
        self.values = [grown(v) for v in self.values]
        self.shared = False


def rotate_pairs_(x: Tensor, cos: Tensor, sin: Tensor) -> None:
    """In place: rotate interleaved channel pairs (2j, 2j+1) of x (..., T, 2J) by the angles in cos/sin (T, J)."""
    pairs = x.unflatten(-1, (-1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated_even = even * cos - odd * sin
    odd.copy_(odd * cos + even * sin)
    even.copy_(rotated_even)


@dataclass
class Modulation:
    """Per-block adaptive-norm parameters computed from the time embedding, one row per time value."""
    blocks: list[Tensor]    # depth x (S, 6 * dim): shift/scale/gate for attention, then for the MLP
    final: Tensor           # (S, 2 * dim): scale, shift of the output norm

    def row(self, index: int) -> "Modulation":
        return Modulation([m[index:index + 1] for m in self.blocks], self.final[index:index + 1])


class SelfAttention(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.heads, self.dim_head = cfg.heads, cfg.dim_head
        self.inner = cfg.heads * cfg.dim_head
        self.qkv = nn.Linear(cfg.dim, 3 * self.inner)   # to_q, to_k, to_v of the checkpoint, stacked
        self.to_out = nn.Linear(self.inner, cfg.dim)

    def forward(self, x: Tensor, tables: FrameTables) -> Tensor:
        batch, frames, _ = x.shape
        qkv = self.qkv(x)                                                   # (B, T, 3 * inner)
        # The released model applies its rotary table (width dim_head) to the flattened q/k, so only
        # the channels of head 0 carry position; the other heads see none. Reproduce that.
        rotate_pairs_(qkv[..., :self.dim_head], tables.cos, tables.sin)
        rotate_pairs_(qkv[..., self.inner:self.inner + self.dim_head], tables.cos, tables.sin)
        q, k, v = qkv.view(batch, frames, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)  # (B, H, T, Dh)
        mask = None if tables.mask is None else tables.mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)                      # (B, H, T, Dh)
        return self.to_out(out.transpose(1, 2).reshape(batch, frames, self.inner))

    def forward_after(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor, keys: Tensor, values: Tensor,
                      start: int, write: bool = True) -> Tensor:
        """New frames x (B, n, dim) at start..start+n-1 attend to the `start` rows cached in the buffers
        keys/values (B, capacity, H, Dh) and to themselves; cos/sin are the rows of their own positions,
        mask (n, start + n). `write`: their keys/values are written into the buffers after those rows
        (which must have room); without it the buffers are only read, and the new rows are joined to
        the cached ones in temporaries of this layer."""
        batch, frames, _ = x.shape
        end = start + frames
        qkv = self.qkv(x)
        rotate_pairs_(qkv[..., :self.dim_head], cos, sin)
        rotate_pairs_(qkv[..., self.inner:self.inner + self.dim_head], cos, sin)
        parts = qkv.view(batch, frames, 3, self.heads, self.dim_head)
        if write:
            keys[:, start:end] = parts[:, :, 1]
            values[:, start:end] = parts[:, :, 2]
            keys, values = keys[:, :end], values[:, :end]
        else:
            keys = torch.cat((keys[:, :start], parts[:, :, 1]), dim=1)
            values = torch.cat((values[:, :start], parts[:, :, 2]), dim=1)
        out = F.scaled_dot_product_attention(parts[:, :, 0].transpose(1, 2), keys.transpose(1, 2),
                                             values.transpose(1, 2), attn_mask=mask.to(qkv.dtype))
        return self.to_out(out.transpose(1, 2).reshape(batch, frames, self.inner))   # (B, n, dim)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: float) -> None:
        super().__init__()
        hidden = int(dim * mult)
        self.fc_in = nn.Linear(dim, hidden)
        self.fc_out = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc_out(F.gelu(self.fc_in(x), approximate="tanh"))


def _modulated_norm(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return torch.addcmul(shift, F.layer_norm(x, x.shape[-1:], eps=NORM_EPS), 1 + scale)


class DiTBlock(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.modulation = nn.Linear(cfg.dim, 6 * cfg.dim)   # from silu(time embedding)
        self.attn = SelfAttention(cfg)
        self.ff = FeedForward(cfg.dim, cfg.ff_mult)

    def forward(self, x: Tensor, mod: Tensor, tables: FrameTables) -> Tensor:
        # mod: (B or 1, 6 * dim) from Modulation; each chunk becomes (B or 1, 1, dim). x is updated in place.
        shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = mod.unsqueeze(1).chunk(6, dim=-1)
        x.addcmul_(gate_a, self.attn(_modulated_norm(x, shift_a, scale_a), tables))
        x.addcmul_(gate_f, self.ff(_modulated_norm(x, shift_f, scale_f)))
        return x

    def forward_after(self, x: Tensor, mod: Tensor, cos: Tensor, sin: Tensor, mask: Tensor, keys: Tensor,
                      values: Tensor, start: int, write: bool = True) -> Tensor:
        shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = mod.unsqueeze(1).chunk(6, dim=-1)
        x.addcmul_(gate_a, self.attn.forward_after(_modulated_norm(x, shift_a, scale_a), cos, sin, mask,
                                                   keys, values, start, write))
        x.addcmul_(gate_f, self.ff(_modulated_norm(x, shift_f, scale_f)))
        return x


class FinalNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.modulation = nn.Linear(dim, 2 * dim)

    def forward(self, x: Tensor, mod: Tensor) -> Tensor:
        scale, shift = mod.unsqueeze(1).chunk(2, dim=-1)   # NB: scale first here, unlike the blocks
        return _modulated_norm(x, shift, scale)


class DiT(Float32Buffers, nn.Module):
    float32_buffers = ("inv_freq",)     # rotary angles stay float32 when the weights go half (as officially)
    inv_freq: Tensor                    # a buffer, declared so its type is known

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.time_embed = TimeEmbedding(cfg.dim)
        self.input_embed = InputEmbedding(cfg)
        # persistent: the checkpoint carries it and we use the stored values
        self.register_buffer("inv_freq", 1.0 / ROPE_BASE ** (torch.arange(0, cfg.dim_head, 2).float() / cfg.dim_head))
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.depth))
        self.norm_out = FinalNorm(cfg.dim)
        self.proj_out = nn.Linear(cfg.dim, cfg.mel_dim)

    def modulation(self, t: Tensor) -> Modulation:
        """Adaptive-norm parameters for diffusion times t (S,). They depend on t only, so a solver can
        compute them for all its steps at once (one weight pass instead of one per step)."""
        act = F.silu(self.time_embed(t))                                    # (S, dim)
        return Modulation([block.modulation(act) for block in self.layers()], self.norm_out.modulation(act))

    def layers(self) -> list[DiTBlock]:
        """The blocks, typed: a type checker sees nn.ModuleList's items as plain Modules."""
        return [cast(DiTBlock, block) for block in self.blocks]

    def frame_tables(self, frames: int, streaming: bool) -> FrameTables:
        return FrameTables.build(self.inv_freq, frames, self.cfg.static_chunk_size if streaming else None)

    def velocity(self, x: Tensor, mu: Tensor, spks: Tensor, cond: Tensor, mod: Modulation,
                 tables: FrameTables) -> Tensor:
        """x, mu, cond: (B, C, T); spks: (B, spk_dim); mod rows: B or 1 -> (B, mel, T)."""
        h = self.input_embed(x.transpose(1, 2), cond.transpose(1, 2), mu.transpose(1, 2), spks)   # (B, T, dim)
        for layer, layer_mod in zip(self.blocks, mod.blocks):
            h = layer(h, layer_mod, tables)
        return self.proj_out(self.norm_out(h, mod.final)).transpose(1, 2)

    def velocity_after(self, x: Tensor, mu: Tensor, spks: Tensor, cond: Tensor, mod: Modulation,
                       cache: StepCache, keep: bool = True) -> Tensor:
        """Block-causal velocity (B, mel, n) of new frames that follow the `cache.frames` already solved
        at this step. x, mu, cond: (B, C, n) of the new frames; cache.frames must end an attention block.
        With `keep` the new frames join the cache; without, the cache still holds only the old ones and
        its buffers never grow for them (they are written only where a buffer of the cache's own
        already has room). Equal, within float rounding, to the new frames' columns of `velocity`
        over all frames."""
        start, block = cache.frames, self.cfg.static_chunk_size
        if start % block:
            raise ValueError(f"cached frames ({start}) must end on an attention block ({block} frames)")
        end = start + x.shape[-1]
        if keep:
            cache.reserve(end)
        write = not cache.shared and cache.keys[0].shape[1] >= end
        cos, sin = rotary_rows(self.inv_freq, start, end)                              # (n, Dh/2)
        mask = block_causal_mask(start, end, block, x.device)                          # (n, end)
        h, proj, mid = self.input_embed.forward_after(x.transpose(1, 2), cond.transpose(1, 2),
                                                      mu.transpose(1, 2), spks, cache)  # (B, n, dim)
        for layer, layer_mod, keys, values in zip(self.layers(), mod.blocks, cache.keys, cache.values):
            h = layer.forward_after(h, layer_mod, cos, sin, mask, keys, values, start, write)
        if keep:
            context = POS_CONV_KERNEL - 1
            cache.proj_tail = torch.cat((cache.proj_tail, proj), dim=1)[:, -context:]
            cache.conv_tail = torch.cat((cache.conv_tail, mid), dim=1)[:, -context:]
            cache.frames = end
        return self.proj_out(self.norm_out(h, mod.final)).transpose(1, 2)

    def forward(self, x: Tensor, mu: Tensor, t: Tensor, spks: Tensor, cond: Tensor, streaming: bool = False) -> Tensor:
        """One velocity evaluation: x, mu, cond (B, C, T); t (B,); spks (B, spk_dim) -> (B, mel, T)."""
        return self.velocity(x, mu, spks, cond, self.modulation(t), self.frame_tables(x.shape[-1], streaming))


def checkpoint_key(key: str) -> str:
    """Official estimator key (below `decoder.estimator.`, after stack_qkv) -> our module key."""
    renames = (
        ("time_embed.time_mlp.0.", "time_embed.fc_in."),
        ("time_embed.time_mlp.2.", "time_embed.fc_out."),
        ("input_embed.conv_pos_embed.conv1.0.", "input_embed.pos_conv.conv1."),
        ("input_embed.conv_pos_embed.conv2.0.", "input_embed.pos_conv.conv2."),
        ("rotary_embed.inv_freq", "inv_freq"),
        ("transformer_blocks.", "blocks."),
        (".attn_norm.linear.", ".modulation."),
        (".attn.to_qkv.", ".attn.qkv."),
        (".attn.to_out.0.", ".attn.to_out."),
        (".ff.ff.0.0.", ".ff.fc_in."),
        (".ff.ff.2.", ".ff.fc_out."),
        ("norm_out.linear.", "norm_out.modulation."),
    )
    for old, new in renames:
        key = key.replace(old, new)
    return key


def stack_qkv(state: dict[str, Tensor], file_name: str) -> dict[str, Tensor]:
    """Replace each `<p>.to_q/.to_k/.to_v.<w|b>` triple by one `<p>.to_qkv.<w|b>` (q, k, v stacked on
    dim 0), so attention runs one projection instead of three. A partial triple is a ModelDirError."""
    parts = (".to_q.", ".to_k.", ".to_v.")
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if parts[0] in key:
            names = [key.replace(parts[0], part) for part in parts]
            missing = [name for name in names if name not in state]
            if missing:
                raise ModelDirError(f"{file_name}: missing key {missing[0]!r} (next to {key!r})")
            out[key.replace(parts[0], ".to_qkv.")] = torch.cat([state[name] for name in names])
        elif parts[1] in key or parts[2] in key:
            query_key = key.replace(parts[1], parts[0]).replace(parts[2], parts[0])
            if query_key not in state:
                raise ModelDirError(f"{file_name}: missing key {query_key!r} (next to {key!r})")
        else:
            out[key] = value
    return out
