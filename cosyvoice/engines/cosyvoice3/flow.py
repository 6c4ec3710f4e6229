"""CosyVoice3's flow-matching mel decoder: speech tokens + prompt mel + speaker vector -> mel frames.

Pipeline: tokens (prompt first) -> embedding -> PreLookaheadLayer -> repeat x token_mel_ratio = mu;
cond = prompt mel then zeros; an Euler ODE solve from fixed noise with classifier-free guidance,
the velocity coming from the DiT in dit.py. Only the frames after the prompt are returned.
"""
from __future__ import annotations

import itertools
import math
import threading
import weakref
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cosyvoice.errors import EngineError

from cosyvoice.engines.cosyvoice3 import checkpoint
from cosyvoice.engines.cosyvoice3.config import FlowConfig
from cosyvoice.engines.cosyvoice3.dit import DiT, StepCache, checkpoint_key as dit_checkpoint_key, stack_qkv

# trace(event, tensors): optional observer of intermediate values, for parity checks only.
# Events: "pre_lookahead" {"out"}; "estimator" {"step", "x", "mask", "mu", "t", "spks", "cond", "out"}
# with the batch-of-2 (conditional, unconditional) tensors the official code feeds its estimator.
Trace = Callable[[str, dict], None]


class PreLookaheadLayer(nn.Module):
    """Each token looks `lookahead` tokens ahead (conv), then 2 back (causal conv); residual."""

    def __init__(self, channels_in: int, channels: int, lookahead: int) -> None:
        super().__init__()
        self.lookahead = lookahead
        self.conv1 = nn.Conv1d(channels_in, channels, lookahead + 1)
        self.conv2 = nn.Conv1d(channels, channels_in, 3)

    def forward(self, x: Tensor, right_context: Tensor | None = None) -> Tensor:
        """x: (B, T, C); right_context: (B, <=lookahead, C) real future tokens, else zeros are used."""
        h = x.transpose(1, 2)                                               # (B, C, T)
        n_context = 0
        if right_context is not None:
            h = torch.cat((h, right_context.transpose(1, 2)), dim=2)
            n_context = right_context.shape[1]
        h = F.leaky_relu(self.conv1(F.pad(h, (0, self.lookahead - n_context))), 0.01)
        h = self.conv2(F.pad(h, (self.conv2.kernel_size[0] - 1, 0)))        # (B, C, T)
        return h.transpose(1, 2) + x


def time_grid(n_steps: int, scheduler: str, dtype: torch.dtype, device: torch.device) -> Tensor:
    grid = torch.linspace(0, 1, n_steps + 1, dtype=dtype, device=device)
    if scheduler == "cosine":   # small steps near the noise end
        grid = 1 - torch.cos(grid * 0.5 * math.pi)
    return grid


def euler_times(n_steps: int, scheduler: str, dtype: torch.dtype, device: torch.device) -> tuple[list[Tensor], list[Tensor]]:
    """(t (1,) at each step, dt of each step). t and dt are carried the way the reference solver does
    (t += dt; dt = grid[k+1] - t) so the float32 times match it bit for bit."""
    grid = time_grid(n_steps, scheduler, dtype, device)
    times, deltas = [], []
    t, dt = grid[0:1], grid[1] - grid[0]
    for step in range(1, n_steps + 1):
        times.append(t)
        deltas.append(dt)
        t = t + dt
        if step < n_steps:
            dt = grid[step + 1] - t
    return times, deltas


class CausalFlow(nn.Module):
    def __init__(self, cfg: FlowConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.input_embedding = nn.Embedding(cfg.vocab_size, cfg.token_dim)
        self.spk_proj = nn.Linear(cfg.spk_embed_dim, cfg.mel_dim)
        self.pre_lookahead = PreLookaheadLayer(cfg.token_dim, cfg.lookahead_channels, cfg.lookahead)
        self.estimator = DiT(cfg.dit)

    def token_features(self, tokens: Tensor, finalize: bool, trace: Trace | None = None) -> Tensor:
        """(1, P+T) token ids -> mu (1, mel frames, token_dim); without finalize the last `lookahead`
        tokens only serve as right context and get no frames."""
        emb = self.input_embedding(tokens.long().clamp(min=0))             # (1, L, C)
        if finalize:
            h = self.pre_lookahead(emb)
        else:
            h = self.pre_lookahead(emb[:, :-self.cfg.lookahead], right_context=emb[:, -self.cfg.lookahead:])
        if trace is not None:
            trace("pre_lookahead", {"out": h})
        return h.repeat_interleave(self.cfg.token_mel_ratio, dim=1)

    @torch.inference_mode()
    def inference(self, token: Tensor, prompt_token: Tensor, prompt_feat: Tensor, embedding: Tensor, noise: Tensor,
                  *, streaming: bool, finalize: bool, n_timesteps: int = 10, bf16: bool = False,
                  trace: Trace | None = None) -> Tensor:
        """Mel frames for `token` (1, T) after the prompt: (1, mel, T_gen), T_gen = ratio * (T [- lookahead]).

        prompt_token (1, P), prompt_feat (1, Tp, mel) the prompt's mel, embedding (1, spk_embed_dim),
        noise (1, mel, N) the fixed initial state (its first P+T frames are used, prompt included).
        streaming: block-causal attention (static_chunk_size frames per block) instead of full attention.
        finalize=False: the last `lookahead` tokens are right context only.
        bf16: run the estimator under bfloat16 autocast (faster on hardware with bf16 units; not exact).
        """
        if token.shape[0] != 1 or prompt_token.shape[0] != 1:
            raise EngineError("flow: only batch size 1 is supported")
        dtype = self.spk_proj.weight.dtype
        device = self.spk_proj.weight.device
        spks = self.spk_proj(F.normalize(embedding.to(device, dtype), dim=1))          # (1, mel)
        mu = self.token_features(torch.cat((prompt_token, token), dim=1).to(device), finalize, trace)
        n_prompt, n_total = prompt_feat.shape[1], mu.shape[1]
        if n_total < n_prompt:
            raise EngineError(f"flow: prompt mel has {n_prompt} frames but the tokens give only {n_total}")
        if noise.shape[-1] < n_total:
            raise EngineError(f"flow: {n_total} mel frames exceed the fixed noise length {noise.shape[-1]}")
        cond = torch.zeros(1, n_total, self.cfg.mel_dim, device=device, dtype=dtype)
        cond[:, :n_prompt] = prompt_feat.to(device, dtype)
        x0 = noise[:, :, :n_total].to(device, dtype)
        mel = self.solve(x0, mu.transpose(1, 2), spks, cond.transpose(1, 2), streaming, n_timesteps, bf16, trace)
        return mel[:, :, n_prompt:].float()

    def solve(self, x: Tensor, mu: Tensor, spks: Tensor, cond: Tensor, streaming: bool, n_steps: int,
              bf16: bool = False, trace: Trace | None = None) -> Tensor:
        """Euler integration of the guided velocity from t=0 (noise x) to t=1. x, mu, cond: (1, C, T)."""
        times, deltas = euler_times(n_steps, self.cfg.t_scheduler, x.dtype, x.device)
        # row 0 conditional, row 1 unconditional (no tokens, speaker or prompt) for guidance
        mu2 = torch.cat((mu, torch.zeros_like(mu)))
        spks2 = torch.cat((spks, torch.zeros_like(spks)))
        cond2 = torch.cat((cond, torch.zeros_like(cond)))
        autocast = torch.autocast(x.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
        rate = self.cfg.cfg_rate
        with autocast:
            modulation = self.estimator.modulation(torch.cat(times))       # all steps in one pass
            tables = self.estimator.frame_tables(x.shape[-1], streaming)
        for step in range(n_steps):
            x2 = x.expand(2, -1, -1)
            with autocast:
                v2 = self.estimator.velocity(x2, mu2, spks2, cond2, modulation.row(step), tables)
            v2 = v2.to(x.dtype)
            if trace is not None:
                trace("estimator", {"step": step, "x": x2, "mask": torch.ones_like(x2[:, :1]), "mu": mu2,
                                    "t": times[step].expand(2), "spks": spks2, "cond": cond2, "out": v2})
            x = x + deltas[step] * ((1.0 + rate) * v2[:1] - rate * v2[1:])
        return x


_CLAIM_KEYS = itertools.count()     # one key per FlowStream for its StreamCacheBudget claim


class StreamCacheBudget:
    """One budget, in allocated bytes, for the flow caches of every stream in flight. A stream claims
    what its caches would hold after growing; when that does not fit beside the others it stops
    caching (later chunks re-solve from what it kept: same audio, slower) instead of running the
    device out of memory. Claims end when the stream finishes or is dropped."""

    def __init__(self, limit_bytes: int):
        self.limit_bytes = limit_bytes
        self._claims: dict[int, int] = {}
        self._lock = threading.Lock()

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return sum(self._claims.values())

    def claim(self, key: int, nbytes: int) -> bool:
        """Hold `nbytes` in all for `key`; False (and the old claim kept) when that would pass the limit."""
        with self._lock:
            others = sum(self._claims.values()) - self._claims.get(key, 0)
            if others + nbytes > self.limit_bytes:
                return False
            self._claims[key] = nbytes
            return True

    def release(self, key: int) -> None:
        with self._lock:
            self._claims.pop(key, None)


class FlowStream:
    """One streamed utterance through the flow, solving each new frame once.

    In streaming mode the estimator's attention is block-causal and its position convolutions look
    only back, so a finished block's keys and values at every solver step, and the last inputs of
    the convolutions, are all a later chunk needs from it: advance() solves only the frames after
    those it cached (per step a StepCache) and returns the same mel as re-solving the whole window
    (within float rounding). A voice's prompt frames before the first speech token can reach them
    are the same for every stream with that voice: `prefix` (from voice_prefix) starts the stream
    past them. Above `budget_bytes` of cache, or when the shared `budget` has no room left, the stream
    stops adding to it, and later chunks solve again from the last frames it kept (correct, only slower);
    such chunks, and the final one, leave the cache buffers as they are (the new frames' keys and
    values live only while their layer runs), so the claim stays what the buffers hold. The final
    chunk frees the caches and then the claim.
    """

    def __init__(self, flow: "CausalFlow", prompt_token: Tensor, prompt_feat: Tensor, embedding: Tensor,
                 noise: Tensor, *, n_steps: int = 10, prefix: list[StepCache] | None = None,
                 budget_bytes: int | None = None, budget: StreamCacheBudget | None = None):
        self.flow, self.n_steps, self.budget_bytes, self.budget = flow, n_steps, budget_bytes, budget
        self._claim_key = next(_CLAIM_KEYS)
        if budget is not None:
            weakref.finalize(self, budget.release, self._claim_key)     # a dropped stream frees its claim
        weight = flow.spk_proj.weight
        self.dtype, self.device = weight.dtype, weight.device
        self.prompt_token = prompt_token.to(self.device)
        self.prompt_feat = prompt_feat.to(self.device, self.dtype)
        self.noise = noise
        with torch.inference_mode():
            spks = flow.spk_proj(F.normalize(embedding.to(self.device, self.dtype), dim=1))   # (1, mel)
            self.spks2 = torch.cat((spks, torch.zeros_like(spks)))   # guidance rows: conditional, unconditional
            self.times, self.deltas = euler_times(n_steps, flow.cfg.t_scheduler, self.dtype, self.device)
            self.modulation = flow.estimator.modulation(torch.cat(self.times))
        self.caches = ([cache.share() for cache in prefix] if prefix else
                       [StepCache.empty(flow.cfg.dit, 2, self.dtype, self.device) for _ in range(n_steps)])
        self.returned = self.prompt_feat.shape[1]                     # mel frames handed out (prompt counts)

    @property
    def cached_frames(self) -> int:
        return self.caches[0].frames if self.caches else 0

    def bytes_per_frame(self) -> int:
        dit = self.flow.cfg.dit
        return self.n_steps * dit.depth * 2 * 2 * dit.heads * dit.dim_head * self.prompt_feat.element_size()

    @torch.inference_mode()
    def advance(self, token: Tensor, *, finalize: bool) -> Tensor:
        """Speech tokens so far (1, T) -> mel (1, mel, n) of the frames after the prompt not returned
        before. Without finalize the last `lookahead` tokens are right context only, and the frames
        before them must end on an attention block (the hop schedule cuts there)."""
        if not self.caches:
            raise EngineError("flow: this stream was already finalized")
        mu = self.flow.token_features(torch.cat((self.prompt_token, token.to(self.device)), dim=1), finalize)
        frames = mu.shape[1]
        if frames < self.prompt_feat.shape[1]:
            raise EngineError(f"flow: prompt mel has {self.prompt_feat.shape[1]} frames but the tokens give only {frames}")
        if self.noise.shape[-1] < frames:
            raise EngineError(f"flow: {frames} mel frames exceed the fixed noise length {self.noise.shape[-1]}")
        cond = torch.zeros(1, frames, self.flow.cfg.mel_dim, device=self.device, dtype=self.dtype)
        cond[:, :self.prompt_feat.shape[1]] = self.prompt_feat
        keep = not finalize and self._may_cache(frames)
        mel = self._solve(mu, cond, frames, keep)                   # frames cached_frames..frames (before keep)
        first = frames - mel.shape[-1]
        new = mel[:, :, max(0, self.returned - first):]
        self.returned = max(self.returned, frames)
        if finalize:      # no later chunk reads the caches: free them now, not when the stream object goes
            self.caches = []
            if self.budget is not None:
                self.budget.release(self._claim_key)
        return new.float()

    def _may_cache(self, frames: int) -> bool:
        """May the caches grow to `frames`? Within this stream's cap and the shared budget, counted in the
        bytes the caches would have allocated (they grow by doubling)."""
        if self.budget_bytes is not None and frames * self.bytes_per_frame() > self.budget_bytes:
            return False
        if self.budget is None:
            return True
        cache = self.caches[0]
        capacity = cache.keys[0].shape[1]
        allocated = capacity if frames <= capacity and not cache.shared else max(frames, 2 * capacity)
        return self.budget.claim(self._claim_key, allocated * self.bytes_per_frame())

    def _solve(self, mu: Tensor, cond: Tensor, end: int, keep: bool) -> Tensor:
        """Euler-solve frames cached_frames..end with guidance; mu, cond (1, frames, C) of the window."""
        start = self.cached_frames
        mu2 = torch.cat((mu[:, start:end], torch.zeros_like(mu[:, start:end]))).transpose(1, 2)  # (2, C, n)
        cond2 = torch.cat((cond[:, start:end], torch.zeros_like(cond[:, start:end]))).transpose(1, 2)
        x = self.noise[:, :, start:end].to(self.device, self.dtype)                            # (1, mel, n)
        rate = self.flow.cfg.cfg_rate
        for step in range(self.n_steps):
            v2 = self.flow.estimator.velocity_after(x.expand(2, -1, -1), mu2, self.spks2, cond2,
                                                    self.modulation.row(step), self.caches[step], keep)
            x = x + self.deltas[step] * ((1.0 + rate) * v2[:1] - rate * v2[1:])
        return x


def voice_prefix(flow: "CausalFlow", prompt_token: Tensor, prompt_feat: Tensor, embedding: Tensor,
                 noise: Tensor, n_steps: int = 10) -> list[StepCache] | None:
    """The StepCaches of a voice's prompt frames that no speech token can reach (the PreLookahead
    layer lets each token see `lookahead` tokens ahead), in whole attention blocks; None if the
    prompt is too short to fill one."""
    block = flow.cfg.dit.static_chunk_size
    reachable = flow.cfg.token_mel_ratio * max(0, prompt_token.shape[1] - flow.cfg.lookahead)
    frames = reachable // block * block
    if frames == 0:
        return None
    stream = FlowStream(flow, prompt_token, prompt_feat, embedding, noise, n_steps=n_steps)
    with torch.inference_mode():
        mu = flow.token_features(stream.prompt_token, finalize=True)                     # (1, 2P, C)
        stream._solve(mu, stream.prompt_feat, frames, keep=True)
    return stream.caches


def checkpoint_key(key: str) -> str:
    """Official flow.pt key -> our module key."""
    if key.startswith("decoder.estimator."):
        return "estimator." + dit_checkpoint_key(key[len("decoder.estimator."):])
    for old, new in (("spk_embed_affine_layer.", "spk_proj."), ("pre_lookahead_layer.", "pre_lookahead.")):
        if key.startswith(old):
            return new + key[len(old):]
    return key


def load_flow(model_dir: Path, cfg: FlowConfig, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32) -> CausalFlow:
    """CausalFlow sized by `cfg`, weights from <model_dir>/flow.pt (strict), in eval mode.

    Built on the meta device and given the checkpoint's tensors (every parameter and buffer of the
    flow is in flow.pt): no randomly initialised full-size copy next to the loaded one.
    """
    with torch.device("meta"):
        model = CausalFlow(cfg)
    state = stack_qkv(checkpoint.read_state_dict(Path(model_dir) / "flow.pt"), "flow.pt")
    checkpoint.load_strict(model, state, "flow.pt", key_map=checkpoint_key, assign=True)
    return model.to(device=device, dtype=dtype).eval()
