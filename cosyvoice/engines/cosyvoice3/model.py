"""The CosyVoice3 synthesis core: speech tokens from the LLM, mel from the flow, waveform from HiFT.

    text ids ─LLM─> speech tokens ─flow(+prompt tokens, prompt mel, speaker)─> mel ─HiFT─> 24 kHz audio

Non-streaming: all tokens first, then one flow call and one HiFT call (`tts`).
Streaming (`tts_stream`): the flow runs in block-causal mode, so the mel of tokens that already
have their right context does not change when more tokens arrive. A chunk is cut whenever
`hop + lookahead` new tokens are there. The flow solves only the frames it has not solved before
(flow.FlowStream keeps every finished block's keys/values per solver step), starting past the
voice's prompt frames that no speech token reaches (computed once per voice, kept for the last
VOICE_PREFIXES_KEPT voices). HiFT is re-run on all frames so far and only the new samples are
emitted (HiFT is causal, so the old samples would come out the same; it is ~5 % of the work).
Chunk boundaries stay on flow attention blocks: prompt + first hop fills whole blocks (the first
hop is the prompt's last block's remainder, plus one block when that remainder is under half a
block), later hops are multiples of the block.

Every piece of decoding state (tokens, hop length, flow caches, samples emitted) belongs to one
call. The model object holds weights, the fixed noise and the per-voice prompt prefixes, which
depend on the voice alone and are never written after they are made, so requests cannot affect
each other.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from cosyvoice.engines.cosyvoice3.config import ModelConfig
from cosyvoice.engines.cosyvoice3.devices import is_out_of_memory
from cosyvoice.engines.cosyvoice3.dit import StepCache
from cosyvoice.engines.cosyvoice3.flow import CausalFlow, FlowStream, StreamCacheBudget, load_flow, voice_prefix
from cosyvoice.engines.cosyvoice3.hift import CausalHiFT, load_hift
from cosyvoice.engines.cosyvoice3.llm import CosyVoice3LM, load_llm
from cosyvoice.engines.cosyvoice3.model_dir import LLM_WEIGHTS
from cosyvoice.engines.cosyvoice3.noise import FLOW_NOISE_SHAPE, ConstructorNoise, constructor_noise
from cosyvoice.engines.cosyvoice3.sampling import Sampler
from cosyvoice.errors import EngineError

# FSQ codes the released tokenizer uses for silence and breath. Long runs of them make long pauses,
# so after MAX_SILENT_RUN of them in a row the rest of the run is dropped.
SILENT_TOKENS = frozenset({1, 2, 28, 29, 55, 248, 494, 2241, 2242, 2322, 2323})
MAX_SILENT_RUN = 5

# Streaming hop growth: the first hop is one attention block (plus prompt padding) for low latency,
# later hops double up to MAX_HOP_BLOCKS blocks, so long texts need few flow/HiFT re-runs.
HOP_GROWTH = 2
MAX_HOP_BLOCKS = 4

# A streamed utterance caches keys/values of every solver step and DiT layer: 3.6 MB per mel frame at
# full size (10 steps x 22 layers x 2 guidance rows x 1024 x k,v x fp32), about 0.2 GB per second of
# audio. Past this budget per stream, or past the model's budget for all streams together
# (stream_cache_bytes), a stream stops caching and re-solves from its last cached frame (slower, same
# audio). The prompt prefixes of the last two voices are kept (a 5 s prompt is about 0.5 GB).
STREAM_CACHE_BYTES = 4 << 30
VOICE_PREFIXES_KEPT = 2

OOM_ADVICE = {
    "llm": "shorten the text piece, or start the server with --precision fp16 or --device cpu",
    "flow": "shorten the text piece or the prompt recording, or use --precision fp16 or --device cpu",
    "hift": "shorten the text piece, or use --device cpu",
    "voice": "use a shorter prompt recording (3-15 s), or use --device cpu",
}


@dataclass
class SynthesisInputs:
    """Everything one text piece needs, already tokenised.

    text_ids (1, T) and prompt_text_ids (1, Tp) are LLM text ids; llm_prompt_tokens (1, P) are the
    speech tokens the LLM continues from (empty in cross-lingual and instruct modes);
    flow_prompt_tokens (1, Pf) + prompt_mel (1, 2*Pf, 80) + embedding (1, 192) give the voice.
    """
    text_ids: Tensor
    prompt_text_ids: Tensor
    llm_prompt_tokens: Tensor
    flow_prompt_tokens: Tensor
    prompt_mel: Tensor
    embedding: Tensor


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Turn a device out-of-memory error into an EngineError that says where and what to do."""
    try:
        yield
    except EngineError:
        raise
    except (torch.cuda.OutOfMemoryError, RuntimeError) as err:
        if not is_out_of_memory(err):
            raise
        raise EngineError(f"Out of GPU memory in the {name} stage; {OOM_ADVICE.get(name, 'try a shorter text')}. "
                          f"The server keeps running and the next request can proceed.", stage=name) from err


def finite_mel(mel: Tensor) -> Tensor:
    """`mel`, or an EngineError for this request when half precision overflowed into inf/NaN."""
    if not bool(torch.isfinite(mel).all()):
        raise EngineError("The flow produced non-finite mel frames (inf/NaN); this request was stopped, the "
                          "others go on. Start the server with --precision fp32 if it happens again.", stage="flow")
    return mel


def drop_long_silences(tokens: Iterable[int], silent: frozenset[int] = SILENT_TOKENS,
                       max_run: int = MAX_SILENT_RUN) -> Iterator[int]:
    """Pass tokens through, skipping a silent token once more than `max_run` silent ones ran in a row."""
    run = 0
    for token in tokens:
        if token in silent:
            run += 1
            if run > max_run:
                continue
        else:
            run = 0
        yield token


@dataclass
class HopSchedule:
    """Token counts between streaming chunks, for one request."""
    block: int                 # tokens per flow attention block (yaml chunk_size)
    lookahead: int             # right-context tokens the flow reads past a chunk's end
    n_prompt: int              # flow prompt tokens: they fill the first blocks

    def first(self) -> int:
        """The official first hop is one block plus the tokens that fill the prompt's last block. When
        those alone are at least half a block of speech, the first chunk is cut right there: the
        audio is the same (block-causal flow, causal HiFT), it only comes sooner."""
        pad = math.ceil(self.n_prompt / self.block) * self.block - self.n_prompt
        return pad if 2 * pad >= self.block else self.block + pad

    def after(self, hop: int, first: bool) -> int:
        base = self.block if first else hop
        return min(MAX_HOP_BLOCKS * self.block, base * HOP_GROWTH)


TokenSource = Callable[..., Iterator[int]]     # the signature of CosyVoice3LM.generate


def max_speech_tokens(token_mel_ratio: int, n_prompt_tokens: int) -> int:
    """How many tokens the fixed flow noise leaves room for after a prompt of `n_prompt_tokens`."""
    return max(0, FLOW_NOISE_SHAPE[-1] // token_mel_ratio - n_prompt_tokens)


class CosyVoice3Model:
    """`decode`: where speech tokens come from (the engine passes its DecodeScheduler's generate, which
    decodes every request in flight together); default: `llm.generate` in the caller's thread.
    `flow_autocast`: the flow's matmul precision (devices.Placement.flow_autocast); HiFT never autocasts."""

    def __init__(self, config: ModelConfig, llm: CosyVoice3LM, flow: CausalFlow, hift: CausalHiFT,
                 noise: ConstructorNoise, device: torch.device | str = "cpu",
                 flow_autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
                 decode: TokenSource | None = None, stream_cache_bytes: int | None = None):
        self.config = config
        self.llm, self.flow, self.hift, self.noise = llm, flow, hift, noise
        self.device = torch.device(device)
        self._autocast = flow_autocast or contextlib.nullcontext
        self._decode = decode or llm.generate
        # every stream's flow caches together (None: only the per-stream cap)
        self.stream_budget = None if stream_cache_bytes is None else StreamCacheBudget(stream_cache_bytes)
        self.token_mel_ratio = flow.cfg.token_mel_ratio
        self.lookahead = flow.cfg.lookahead
        self.samples_per_frame = hift.config.samples_per_frame
        # The fixed noise bounds one utterance: flow frames (prompt included) and HiFT samples.
        self.max_mel_frames = noise.flow_z.shape[-1]
        self._voice_prefixes: OrderedDict[str, list[StepCache] | None] = OrderedDict()
        self._prefix_lock = threading.Lock()

    @classmethod
    def load(cls, model_dir: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
             flow_autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
             llm_weights: str = LLM_WEIGHTS, llm: CosyVoice3LM | None = None,
             decode: TokenSource | None = None, stream_cache_bytes: int | None = None) -> "CosyVoice3Model":
        """`llm_weights`: which LLM checkpoint of the dir to load (the release has llm.pt and may add llm.rl.pt);
        `llm`: an LLM already loaded (and prepared) by the caller instead. `dtype`: how the LLM and flow
        weights are stored; HiFT is always float32."""
        config = ModelConfig.from_model_dir(model_dir)
        llm = llm if llm is not None else load_llm(Path(model_dir) / llm_weights, config.llm, device, dtype)
        flow = load_flow(Path(model_dir), config.flow, device, dtype)
        hift = load_hift(model_dir, config.hift, device, torch.float32)   # the vocoder stays float32
        return cls(config, llm, flow, hift, constructor_noise(config.flow, config.hift), device, flow_autocast,
                   decode, stream_cache_bytes)

    # -- tokens -----------------------------------------------------------------------------------

    def max_speech_tokens(self, n_prompt_tokens: int) -> int:
        """How many tokens the fixed noise leaves room for after a prompt of `n_prompt_tokens`."""
        return max_speech_tokens(self.token_mel_ratio, n_prompt_tokens)

    def speech_tokens(self, inputs: SynthesisInputs, *, generator: torch.Generator | None = None,
                      sampler: Sampler | None = None, min_token_text_ratio: float = 2.0,
                      max_token_text_ratio: float = 20.0) -> Iterator[int]:
        """LLM tokens with long silences dropped, capped at what the flow noise can render."""
        cap = self.max_speech_tokens(inputs.flow_prompt_tokens.shape[1])
        raw = self._decode(inputs.text_ids, inputs.prompt_text_ids, inputs.llm_prompt_tokens,
                                sampling=self.config.sampling, min_token_text_ratio=min_token_text_ratio,
                                max_token_text_ratio=max_token_text_ratio, generator=generator, sampler=sampler)
        kept = drop_long_silences(raw)
        for _ in range(cap):
            with stage("llm"):
                token = next(kept, None)
            if token is None:
                return
            yield token

    # -- tokens -> audio ----------------------------------------------------------------------------

    def flow_mel(self, tokens: Tensor, prompt_token: Tensor, prompt_feat: Tensor, embedding: Tensor, *,
                 streaming: bool, finalize: bool) -> Tensor:
        """(1, T) tokens -> (1, 80, frames) mel after the prompt."""
        with stage("flow"), self._autocast():
            mel = self.flow.inference(tokens.to(self.device), prompt_token.to(self.device),
                                      prompt_feat.to(self.device), embedding.to(self.device),
                                      self.noise.flow_z, streaming=streaming, finalize=finalize)
        return finite_mel(mel)

    def flow_stream(self, prompt_token: Tensor, prompt_feat: Tensor, embedding: Tensor) -> FlowStream:
        """A FlowStream for one streamed utterance, started past the voice's cached prompt prefix."""
        key = hashlib.sha256(str(self.flow.spk_proj.weight.dtype).encode() + b"".join(
            t.detach().cpu().contiguous().numpy().tobytes() for t in (prompt_token, prompt_feat, embedding))).hexdigest()
        with self._prefix_lock:
            known = key in self._voice_prefixes
            prefix = self._voice_prefixes.get(key)
            if known:
                self._voice_prefixes.move_to_end(key)
        if not known:
            with stage("flow"), self._autocast():
                prefix = voice_prefix(self.flow, prompt_token, prompt_feat, embedding, self.noise.flow_z)
            with self._prefix_lock:
                self._voice_prefixes[key] = prefix
                while len(self._voice_prefixes) > VOICE_PREFIXES_KEPT:
                    self._voice_prefixes.popitem(last=False)
        return FlowStream(self.flow, prompt_token, prompt_feat, embedding, self.noise.flow_z, prefix=prefix,
                          budget_bytes=STREAM_CACHE_BYTES, budget=self.stream_budget)

    def forget_voice_prefixes(self) -> None:
        """Drop the cached prompt prefixes (the next stream of each voice solves its prompt again)."""
        with self._prefix_lock:
            self._voice_prefixes.clear()

    def stream_mel(self, stream: FlowStream, tokens: Tensor, *, finalize: bool) -> Tensor:
        """(1, T) tokens so far -> (1, 80, n) mel frames the stream had not returned yet."""
        with stage("flow"), self._autocast():
            mel = stream.advance(tokens, finalize=finalize)
        return finite_mel(mel)

    def vocode(self, mel: Tensor, *, finalize: bool) -> Tensor:
        """(1, 80, frames) -> (1, samples). finalize=False: the last frames are look-ahead only."""
        with stage("hift"):
            speech, _ = self.hift.inference(mel.to(self.device), self.noise, finalize=finalize)
        return speech

    def token2wav(self, tokens: Tensor, prompt_token: Tensor, prompt_feat: Tensor, embedding: Tensor, *,
                  finalize: bool = True, streaming: bool = False, speed: float = 1.0,
                  on_stage: Callable[[str], None] | None = None) -> Tensor:
        """Waveform (1, N) for speech tokens (1, T) in one go; speed != 1 stretches the mel in time."""
        if on_stage is not None:
            on_stage("flow")
        mel = self.flow_mel(tokens, prompt_token, prompt_feat, embedding, streaming=streaming, finalize=finalize)
        if speed != 1.0:
            if not finalize:
                raise ValueError("speed change needs the whole utterance (finalize=True)")
            mel = F.interpolate(mel, size=int(mel.shape[2] / speed), mode="linear")
        if on_stage is not None:
            on_stage("hift")
        return self.vocode(mel, finalize=finalize)

    # -- whole requests ---------------------------------------------------------------------------

    def tts(self, inputs: SynthesisInputs, *, speed: float = 1.0, generator: torch.Generator | None = None,
            sampler: Sampler | None = None, on_token: Callable[[int], None] | None = None,
            on_stage: Callable[[str], None] | None = None,
            max_token_text_ratio: float = 20.0) -> tuple[Tensor, list[int]]:
        """Non-streaming: (waveform (1, N), the speech tokens it was made from).

        on_stage is told "llm", "flow" and "hift" as each begins (for traces); max_token_text_ratio
        bounds the speech tokens per text token (the released rule; benchmarks raise it)."""
        if on_stage is not None:
            on_stage("llm")
        tokens: list[int] = []
        for token in self.speech_tokens(inputs, generator=generator, sampler=sampler,
                                        max_token_text_ratio=max_token_text_ratio):
            tokens.append(token)
            if on_token is not None:
                on_token(len(tokens))
        if not tokens:
            return torch.zeros(1, 0), tokens
        wav = self.token2wav(torch.tensor([tokens], dtype=torch.int64), inputs.flow_prompt_tokens,
                             inputs.prompt_mel, inputs.embedding, finalize=True, streaming=False, speed=speed,
                             on_stage=on_stage)
        return wav, tokens

    def tts_stream(self, inputs: SynthesisInputs, *, generator: torch.Generator | None = None,
                   sampler: Sampler | None = None, on_token: Callable[[int], None] | None = None,
                   on_chunk: Callable[[int, int], None] | None = None,
                   on_stage: Callable[[str], None] | None = None,
                   max_token_text_ratio: float = 20.0) -> Iterator[Tensor]:
        """Streaming: yield (1, n) waveform pieces as the tokens arrive; the last one is finalized.

        on_chunk(token_offset, hop) is told each non-final chunk's start and hop (for tests/logs);
        on_stage is told "llm", "flow" and "hift" each time the work moves to that part (for traces).
        """
        enter = on_stage or (lambda name: None)
        enter("llm")
        prompt_token, prompt_mel, embedding = inputs.flow_prompt_tokens, inputs.prompt_mel, inputs.embedding
        schedule = HopSchedule(self.config.chunk_size, self.lookahead, prompt_token.shape[1])
        tokens: list[int] = []
        offset = 0                                   # tokens whose mel is final
        hop = schedule.first()
        mel = torch.zeros(1, self.flow.cfg.mel_dim, 0, device=self.device)
        emitted = 0                                  # samples already yielded
        stream: FlowStream | None = None             # made at the first chunk (its voice prefix costs flow time)

        for token in self.speech_tokens(inputs, generator=generator, sampler=sampler,
                                        max_token_text_ratio=max_token_text_ratio):
            tokens.append(token)
            if on_token is not None:
                on_token(len(tokens))
            if len(tokens) - offset < hop + self.lookahead:
                continue
            window = torch.tensor([tokens[:offset + hop + self.lookahead]], dtype=torch.int64)
            enter("flow")
            stream = stream or self.flow_stream(prompt_token, prompt_mel, embedding)
            new_mel = self.stream_mel(stream, window, finalize=False)
            mel = torch.cat([mel, new_mel.to(mel.device)], dim=2)
            enter("hift")
            speech = self.vocode(mel, finalize=False)
            if on_chunk is not None:
                on_chunk(offset, hop)
            piece = speech[:, emitted:]
            emitted = speech.shape[1]
            yield piece
            enter("llm")
            offset, hop = offset + hop, schedule.after(hop, first=offset == 0)

        if not tokens:
            yield torch.zeros(1, 0)
            return
        # Last chunk: every remaining token, no right context left to wait for.
        all_tokens = torch.tensor([tokens], dtype=torch.int64)
        enter("flow")
        stream = stream or self.flow_stream(prompt_token, prompt_mel, embedding)
        new_mel = self.stream_mel(stream, all_tokens, finalize=True)
        mel = torch.cat([mel, new_mel.to(mel.device)], dim=2)
        enter("hift")
        speech = self.vocode(mel, finalize=True)
        yield speech[:, emitted:]
