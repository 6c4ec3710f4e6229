"""The diffusion transformer that predicts the flow-matching velocity of CosyVoice3's mel decoder.

Input per frame: noisy mel x, prompt-mel condition, token features mu and the speaker vector; the
diffusion time t enters through adaptive LayerNorm modulation in every block. Layout inside the
model is (batch, frames, channels); the public forward takes and returns channels-first tensors
like the rest of the flow code.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TIME_FEATURES = 256     # sinusoid size fed to the time MLP
TIME_SCALE = 1000.0     # t in [0, 1] is stretched to [0, 1000] before the sinusoid
POS_CONV_KERNEL = 31
POS_CONV_GROUPS = 16
NORM_EPS = 1e-6
ROPE_BASE = 10000.0


@dataclass(frozen=True)
class DiTConfig:
    dim: int
    depth: int
    heads: int
    dim_head: int
    ff_mult: float
    mel_dim: int
    mu_dim: int
    spk_dim: int
    out_channels: int
    static_chunk_size: int   # frames per attention block when streaming

    @classmethod
    def from_values(cls, estimator: dict) -> "DiTConfig":
        mel_dim = int(estimator.get("mel_dim", 80))
        mu_dim = estimator.get("mu_dim")
        out_channels = estimator.get("out_channels")
        return cls(
            dim=int(estimator["dim"]),
            depth=int(estimator.get("depth", 8)),
            heads=int(estimator.get("heads", 8)),
            dim_head=int(estimator.get("dim_head", 64)),
            ff_mult=float(estimator.get("ff_mult", 4)),
            mel_dim=mel_dim,
            mu_dim=mel_dim if mu_dim is None else int(mu_dim),
            spk_dim=int(estimator.get("spk_dim") or 0),
            out_channels=mel_dim if out_channels is None else int(out_channels),
            static_chunk_size=int(estimator.get("static_chunk_size", 50)),
        )


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


def rope_tables(inv_freq: Tensor, frames: int) -> tuple[Tensor, Tensor]:
    """cos/sin of position * frequency, (T, dim_head/2) each, in float32."""
    angles = torch.outer(torch.arange(frames, device=inv_freq.device, dtype=torch.float32), inv_freq.float())
    return angles.cos(), angles.sin()


def rotate_pairs(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate interleaved channel pairs (2j, 2j+1) of x (..., T, 2J) by the angles in cos/sin (T, J)."""
    pairs = x.unflatten(-1, (-1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((even * cos - odd * sin, odd * cos + even * sin), dim=-1)
    return rotated.flatten(-2).to(x.dtype)


class SelfAttention(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        inner = cfg.heads * cfg.dim_head
        self.heads, self.dim_head = cfg.heads, cfg.dim_head
        self.to_q = nn.Linear(cfg.dim, inner)
        self.to_k = nn.Linear(cfg.dim, inner)
        self.to_v = nn.Linear(cfg.dim, inner)
        self.to_out = nn.Linear(inner, cfg.dim)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], mask: Tensor | None) -> Tensor:
        batch, frames, _ = x.shape
        q = self.to_q(x).view(batch, frames, self.heads, self.dim_head).transpose(1, 2)   # (B, H, T, Dh)
        k = self.to_k(x).view(batch, frames, self.heads, self.dim_head).transpose(1, 2)
        v = self.to_v(x).view(batch, frames, self.heads, self.dim_head).transpose(1, 2)
        # The released model applies its rotary table (width dim_head) to the flattened q/k, so only
        # the channels of head 0 carry position; the other heads see none. Reproduce that.
        cos, sin = rope
        q = torch.cat((rotate_pairs(q[:, :1], cos, sin), q[:, 1:]), dim=1)
        k = torch.cat((rotate_pairs(k[:, :1], cos, sin), k[:, 1:]), dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)                      # (B, H, T, Dh)
        return self.to_out(out.transpose(1, 2).reshape(batch, frames, -1))


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: float) -> None:
        super().__init__()
        hidden = int(dim * mult)
        self.fc_in = nn.Linear(dim, hidden)
        self.fc_out = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc_out(F.gelu(self.fc_in(x), approximate="tanh"))


def _layer_norm(x: Tensor) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], eps=NORM_EPS)


class DiTBlock(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.modulation = nn.Linear(cfg.dim, 6 * cfg.dim)   # from silu(time embedding)
        self.attn = SelfAttention(cfg)
        self.ff = FeedForward(cfg.dim, cfg.ff_mult)

    def forward(self, x: Tensor, time_act: Tensor, rope: tuple[Tensor, Tensor], mask: Tensor | None) -> Tensor:
        # time_act: silu(time embedding), (B, dim); each chunk below is (B, 1, dim)
        shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = self.modulation(time_act).unsqueeze(1).chunk(6, dim=-1)
        h = _layer_norm(x) * (1 + scale_a) + shift_a
        x = x + gate_a * self.attn(h, rope, mask)
        h = _layer_norm(x) * (1 + scale_f) + shift_f
        return x + gate_f * self.ff(h)


class FinalNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.modulation = nn.Linear(dim, 2 * dim)

    def forward(self, x: Tensor, time_act: Tensor) -> Tensor:
        scale, shift = self.modulation(time_act).unsqueeze(1).chunk(2, dim=-1)   # NB: scale first here
        return _layer_norm(x) * (1 + scale) + shift


def block_causal_mask(frames: int, block: int, device: torch.device | None = None) -> Tensor:
    """(T, T) bool: frame i sees frame j iff j lies in i's block of `block` frames or an earlier one."""
    pos = torch.arange(frames, device=device)
    return pos.unsqueeze(0) < ((pos // block + 1) * block).unsqueeze(1)


class DiT(nn.Module):
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

    def forward(self, x: Tensor, mu: Tensor, t: Tensor, spks: Tensor, cond: Tensor, streaming: bool = False) -> Tensor:
        """x, mu, cond: (B, C, T); t: (B,); spks: (B, spk_dim) -> velocity (B, mel, T)."""
        frames = x.shape[-1]
        time_act = F.silu(self.time_embed(t))
        h = self.input_embed(x.transpose(1, 2), cond.transpose(1, 2), mu.transpose(1, 2), spks)
        rope = rope_tables(self.inv_freq, frames)
        mask = block_causal_mask(frames, self.cfg.static_chunk_size, x.device) if streaming else None
        for block in self.blocks:
            h = block(h, time_act, rope, mask)
        return self.proj_out(self.norm_out(h, time_act)).transpose(1, 2)


def checkpoint_key(key: str) -> str:
    """Official estimator key (below `decoder.estimator.`) -> our module key."""
    renames = (
        ("time_embed.time_mlp.0.", "time_embed.fc_in."),
        ("time_embed.time_mlp.2.", "time_embed.fc_out."),
        ("input_embed.conv_pos_embed.conv1.0.", "input_embed.pos_conv.conv1."),
        ("input_embed.conv_pos_embed.conv2.0.", "input_embed.pos_conv.conv2."),
        ("rotary_embed.inv_freq", "inv_freq"),
        ("transformer_blocks.", "blocks."),
        (".attn_norm.linear.", ".modulation."),
        (".attn.to_out.0.", ".attn.to_out."),
        (".ff.ff.0.0.", ".ff.fc_in."),
        (".ff.ff.2.", ".ff.fc_out."),
        ("norm_out.linear.", "norm_out.modulation."),
    )
    for old, new in renames:
        key = key.replace(old, new)
    return key
