"""CosyVoice3 as an Engine: prompt features, LLM text forming per mode, seeded synthesis, streaming.

What the LLM sees per mode (the released model was trained on these exact forms):

* zero_shot:     prompt text = "You are a helpful assistant.<|endofprompt|>" + transcript, then the
                 prompt's speech tokens; the new speech continues the prompt.
* cross_lingual: no prompt text and no prompt speech tokens; the text itself carries the
                 "You are a helpful assistant.<|endofprompt|>" prefix.
* instruct:      prompt text = "You are a helpful assistant. " + instruction + "<|endofprompt|>",
                 no prompt speech tokens.

In every mode the flow gets the prompt's speech tokens, mel and speaker embedding: that is what
makes the output sound like the prompt. A text that already holds <|endofprompt|> is taken as the
user's own system part and used unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import os

import numpy as np
import torch
from torch import Tensor

from cosyvoice.engines.base import Capabilities, Progress, ProgressCallback, PromptAudio, Style, Voice
from cosyvoice.engines.cosyvoice3 import features
from cosyvoice.engines.cosyvoice3.config import ModelConfig
from cosyvoice.engines.cosyvoice3.devices import half_projections, place
from cosyvoice.engines.cosyvoice3.llm import load_llm
from cosyvoice.engines.cosyvoice3.model import CosyVoice3Model, SynthesisInputs, max_speech_tokens, stage
from cosyvoice.engines.cosyvoice3.model_dir import LLM_WEIGHTS, check_model_dir, model_identity
from cosyvoice.engines.cosyvoice3.onnx_models import CampPlus, SpeechTokenizer
from cosyvoice.engines.cosyvoice3.quantize import quantize_int8
from cosyvoice.engines.cosyvoice3.scheduler import DecodeScheduler, prepare_batched_decoding
from cosyvoice.engines.cosyvoice3.tokenizer import CosyVoice3Tokenizer
from cosyvoice.errors import UserInputError
from cosyvoice.text.special_tokens import END_OF_PROMPT, SYSTEM_PROMPT

FEATURE_RATE = 16000                 # campplus and the speech tokenizer take 16 kHz audio
# Speech tokens per LLM text token when the prompt cannot tell us (progress estimate only).
DEFAULT_TOKENS_PER_TEXT_ID = 7.0
DEFAULT_SLOTS_CUDA, DEFAULT_SLOTS_CPU = 4, 2
CPU_DECODE_AHEAD = 2   # tokens a request may decode beyond what its consumer took (CPU)
QUANTIZE_MODES = (None, "int8")
# LLM positions a request's prompt sequence may take (sos, prompt text + text, task id, prompt speech):
# a 30 s prompt is 750 speech tokens, a long text piece a few hundred ids.
PREFILL_POSITIONS = 2048


def zero_shot_prompt_text(transcript: str) -> str:
    transcript = transcript.strip()
    return transcript if END_OF_PROMPT in transcript else SYSTEM_PROMPT + END_OF_PROMPT + transcript


def cross_lingual_text(text: str) -> str:
    return text if END_OF_PROMPT in text else SYSTEM_PROMPT + END_OF_PROMPT + text


def instruct_prompt_text(instruction: str) -> str:
    """The one place a bare instruction (UI presets, the user's text) is wrapped for the model."""
    instruction = instruction.strip()
    if END_OF_PROMPT in instruction:
        return instruction
    if instruction.startswith(SYSTEM_PROMPT):
        return instruction + END_OF_PROMPT
    return f"{SYSTEM_PROMPT} {instruction}{END_OF_PROMPT}"


def stream_cache_budget(device: torch.device, gigabytes: float | None) -> int:
    """Bytes for all streams' flow caches: `gigabytes`, else half of what the device has free now."""
    if gigabytes is not None:
        return int(gigabytes * 2**30)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")     # free RAM, page cache not counted
    return free // 2


@dataclass
class VoiceFeatures:
    speech_tokens: Tensor     # (1, P) int64, cut so that the mel has exactly token_mel_ratio frames each
    prompt_mel: Tensor        # (1, ratio * P, 80)
    embedding: Tensor         # (1, 192) campplus speaker vector
    seconds: float


class CosyVoice3Engine:
    name = "cosyvoice3"

    def __init__(self, model_dir: str | Path, device: str = "auto", precision: str = "auto",
                 llm_weights: str = LLM_WEIGHTS, batch_slots: int | None = None, quantize: str | None = None,
                 cuda_graphs: bool = True, stream_cache_gb: float | None = None):
        """llm_weights: the LLM checkpoint file in the model dir (llm.pt, or e.g. llm.rl.pt beside it).
        batch_slots: requests decoded together (None: 4 on CUDA, 2 on CPU); quantize: None or "int8"
        (weight-only int8 LLM projections, CPU only); cuda_graphs: capture the decode step on CUDA;
        stream_cache_gb: the flow caches of all streams together (None: half the device's free memory
        at start).
        """
        if quantize not in QUANTIZE_MODES:
            raise ValueError(f"unknown quantize mode {quantize!r}: use one of {', '.join(map(str, QUANTIZE_MODES))}")
        if batch_slots is not None and batch_slots < 1:
            raise ValueError(f"batch_slots must be at least 1, got {batch_slots}")
        if stream_cache_gb is not None and stream_cache_gb < 0:
            raise ValueError(f"stream_cache_gb must be 0 or more, got {stream_cache_gb}")
        self.model_dir = check_model_dir(model_dir, llm_weights)
        self.llm_weights = llm_weights
        self.placement = place(device, precision)
        if quantize == "int8" and self.placement.device.type == "cuda":
            raise ValueError("--quantize int8 runs on CPU only (its kernels are fbgemm's); on CUDA leave it "
                             "off and use --precision fp16 or auto")
        self.device = str(self.placement.device)
        self.quantize = quantize
        self.config = config = ModelConfig.from_model_dir(self.model_dir)
        self.scheduler = self._build_scheduler(batch_slots, cuda_graphs)
        self.stream_cache_bytes = stream_cache_budget(self.placement.device, stream_cache_gb)
        self.model = CosyVoice3Model.load(self.model_dir, self.placement.device, self.placement.dtype,
                                          flow_autocast=self.placement.flow_autocast(), llm=self.scheduler.llm,
                                          decode=self.scheduler.generate, stream_cache_bytes=self.stream_cache_bytes)
        self.sample_rate = config.sample_rate
        self.model_label = f"CosyVoice3 ({self.model_dir.name})"
        self.tokenizer = CosyVoice3Tokenizer(config.qwen_dir)
        onnx_device = "cuda" if self.placement.device.type == "cuda" else "cpu"
        self.campplus = CampPlus(self.model_dir / "campplus.onnx", onnx_device)
        self.speech_tokenizer = SpeechTokenizer(self.model_dir / "speech_tokenizer_v3.onnx", onnx_device)
        self.mel_config = config.prompt_mel

    def _build_scheduler(self, batch_slots: int | None, cuda_graphs: bool) -> DecodeScheduler:
        """Load the LLM in its precision (devices.PRECISION_PLAN), prepare it for batched decoding and
        start the scheduler that decodes every request on it."""
        placement = self.placement
        llm = load_llm(self.model_dir / self.llm_weights, self.config.llm, placement.device, placement.dtype)
        half_projections(llm, placement.llm_precision)
        if self.quantize == "int8":
            quantize_int8(llm)
        on_cuda = placement.device.type == "cuda"
        slots = batch_slots if batch_slots is not None else (DEFAULT_SLOTS_CUDA if on_cuda else DEFAULT_SLOTS_CPU)
        capacity = PREFILL_POSITIONS + max_speech_tokens(self.config.token_mel_ratio, 0)
        decoder = prepare_batched_decoding(llm, slots, capacity, cuda_graphs=cuda_graphs,
                                           autocast=placement.llm_autocast())
        # On CPU the LLM and the flow share the cores: a streaming request decodes at most a couple of
        # tokens beyond what its consumer took (see scheduler). On a GPU decoding ahead is free overlap.
        return DecodeScheduler(decoder, max_ahead=None if on_cuda else CPU_DECODE_AHEAD,
                               autocast=placement.llm_autocast())

    # -- Engine protocol ------------------------------------------------------------------------

    def parallelism(self) -> int:
        """Requests the engine decodes at once: the scheduler's slots (the service's default concurrency)."""
        return self.scheduler.slots

    def capabilities(self) -> Capabilities:
        return Capabilities(prompt_sample_rates=(FEATURE_RATE, self.mel_config.sample_rate))

    def text_token_counter(self):
        return lambda text: len(self.tokenizer.encode(text))

    def startup_notices(self) -> list[str]:
        return [self.placement.notice] if self.placement.notice else []

    def style_notices(self, style: Style) -> list[str]:
        return []

    def version_info(self) -> dict[str, Any]:
        return {
            "engine": self.name,
            "model_dir": str(self.model_dir),
            "identity": model_identity(self.model_dir, self.llm_weights),
            "sample_rate": self.sample_rate,
            "token_frame_rate": self.config.token_frame_rate,
            "token_mel_ratio": self.config.token_mel_ratio,
            "chunk_size": self.config.chunk_size,
            "llm_weights": self.llm_weights,
            "precision": self.placement.precision,
            "llm_precision": self.placement.llm_precision,
            "flow_precision": self.placement.flow_precision,
            "requested_precision": self.placement.requested_precision,
            "device": self.device,
            "batch_slots": self.scheduler.slots,
            "decode_batching": self.scheduler.mode,
            "quantize": self.quantize,
            "cuda_graphs": self.scheduler.cuda_graphs,
            "stream_cache_gb": round(self.stream_cache_bytes / 2**30, 2),
        }

    def prepare_voice(self, audio: PromptAudio, prompt_text: str | None) -> Voice:
        wav = torch.from_numpy(np.ascontiguousarray(audio.samples, dtype=np.float32)).reshape(1, -1)
        with stage("voice"):
            wav_16k = features.resample(wav, audio.sample_rate, FEATURE_RATE)
            tokens = self.speech_tokenizer.tokens(features.whisper_log_mel(wav_16k))          # (1, P)
            embedding = self.campplus.embed(features.campplus_input(features.kaldi_fbank(wav_16k)))
            wav_out = features.resample(wav, audio.sample_rate, self.mel_config.sample_rate)
            mel = features.prompt_mel_from_config(wav_out, self.mel_config).transpose(1, 2)  # (1, T, 80)
            mel, tokens = features.align_prompt(mel, tokens, self.config.token_mel_ratio)
        if tokens.shape[1] == 0:
            raise UserInputError("The prompt recording is too short to take a voice from; use 3-15 s of speech.")
        return Voice(prompt_text=prompt_text,
                     features=VoiceFeatures(tokens.long(), mel.float().contiguous(), embedding.float(),
                                            audio.seconds))

    def synthesize(self, text: str, voice: Voice, style: Style, seed: int,
                   on_progress: ProgressCallback, stream: bool = False) -> Iterator[np.ndarray]:
        inputs, expected = self._inputs(text, voice, style)
        generator = torch.Generator(device=self.model.device)
        generator.manual_seed(int(seed))

        def on_token(count: int) -> None:
            if count % 5 == 0:
                on_progress(Progress(f"speech tokens {count}/~{expected}"))

        return self._run(inputs, style, generator, on_token, on_progress, stream)

    # -- internals ----------------------------------------------------------------------------------

    def _run(self, inputs: SynthesisInputs, style: Style, generator: torch.Generator, on_token,
             on_progress: ProgressCallback, stream: bool) -> Iterator[np.ndarray]:
        def enter(name: str) -> None:
            on_progress(Progress(f"{name} started", stage=name))

        # A speed change stretches the whole utterance's mel, so it cannot be streamed chunk by chunk:
        # such a request is rendered in one piece even when streaming was asked for.
        if stream and style.speed == 1.0:
            produced = 0
            for piece in self.model.tts_stream(inputs, generator=generator, on_token=on_token, on_stage=enter):
                produced += piece.shape[1]
                on_progress(Progress(f"vocoded {produced / self.sample_rate:.1f} s"))
                yield piece[0].float().cpu().numpy()
        else:
            wav, _ = self.model.tts(inputs, speed=style.speed, generator=generator, on_token=on_token,
                                    on_stage=enter)
            on_progress(Progress(f"vocoded {wav.shape[1] / self.sample_rate:.1f} s"))
            yield wav[0].float().cpu().numpy()

    def _ids(self, text: str) -> Tensor:
        return torch.tensor([self.tokenizer.encode(text)], dtype=torch.int64)

    def _inputs(self, text: str, voice: Voice, style: Style) -> tuple[SynthesisInputs, int]:
        """LLM/flow inputs for one piece, and a guess of how many speech tokens it will take (progress)."""
        feats: VoiceFeatures = voice.features
        no_speech = torch.zeros(1, 0, dtype=torch.int64)
        no_text = torch.zeros(1, 0, dtype=torch.int64)
        tokens_per_id = DEFAULT_TOKENS_PER_TEXT_ID
        if style.mode == "zero_shot":
            transcript = voice.prompt_text or ""
            if not transcript.strip():
                raise UserInputError("Zero-shot cloning needs the transcript of the prompt recording; "
                                     "use cross-lingual mode when you do not have it.")
            prompt_ids = self._ids(zero_shot_prompt_text(transcript))
            transcript_ids = len(self.tokenizer.encode(transcript.split(END_OF_PROMPT)[-1]))
            if transcript_ids:
                tokens_per_id = min(20.0, max(2.0, feats.speech_tokens.shape[1] / transcript_ids))
            inputs = SynthesisInputs(self._ids(text), prompt_ids, feats.speech_tokens, feats.speech_tokens,
                                     feats.prompt_mel, feats.embedding)
        elif style.mode == "cross_lingual":
            inputs = SynthesisInputs(self._ids(cross_lingual_text(text)), no_text, no_speech, feats.speech_tokens,
                                     feats.prompt_mel, feats.embedding)
        elif style.mode == "instruct":
            if not style.instruct_text.strip():
                raise UserInputError("Instruct mode needs an instruction, e.g. 请用四川话表达。 or "
                                     "'Please say a sentence as loudly as possible.'")
            inputs = SynthesisInputs(self._ids(text), self._ids(instruct_prompt_text(style.instruct_text)),
                                     no_speech, feats.speech_tokens, feats.prompt_mel, feats.embedding)
        else:
            raise UserInputError(f"Unknown mode {style.mode!r}; use zero_shot, cross_lingual or instruct.")
        n_text = len(self.tokenizer.encode(text))
        if n_text == 0:
            raise UserInputError("The text to synthesise is empty.")
        return inputs, max(1, round(n_text * tokens_per_id))

    # -- saved voices: speech tokens, prompt mel and speaker embedding as arrays ------------------------

    def feature_identity(self) -> str:
        identity = model_identity(self.model_dir, self.llm_weights)
        yaml_sha1 = (identity["yaml_sha1"] or "?")[:12]
        return f"cosyvoice3/{identity['name']}/yaml-{yaml_sha1}/files-{identity['files_sha1']}"

    def export_voice(self, voice: Voice) -> dict[str, np.ndarray]:
        feats: VoiceFeatures = voice.features
        return {"speech_tokens": feats.speech_tokens.cpu().numpy().astype(np.int64),
                "prompt_mel": feats.prompt_mel.float().cpu().numpy(),
                "embedding": feats.embedding.float().cpu().numpy(),
                "seconds": np.array(feats.seconds, dtype=np.float64)}

    def import_voice(self, arrays: dict[str, np.ndarray], prompt_text: str | None) -> Voice:
        tokens = torch.from_numpy(np.asarray(arrays["speech_tokens"], dtype=np.int64))
        mel = torch.from_numpy(np.asarray(arrays["prompt_mel"], dtype=np.float32))
        embedding = torch.from_numpy(np.asarray(arrays["embedding"], dtype=np.float32))
        ratio = self.config.token_mel_ratio
        if tokens.ndim != 2 or mel.ndim != 3 or mel.shape[1] != ratio * tokens.shape[1] or embedding.ndim != 2:
            raise ValueError(f"feature shapes do not fit: tokens {tuple(tokens.shape)}, mel {tuple(mel.shape)}, "
                             f"embedding {tuple(embedding.shape)}")
        return Voice(prompt_text=prompt_text,
                     features=VoiceFeatures(tokens, mel.contiguous(), embedding, float(arrays["seconds"])))
