"""The one place a request lives: validate → text → voice → synthesize → save → report.

The UI, the Gradio API and the CLI all call `SynthesisService.run`, so every path gets the same
checks, the same log lines and the same saved files.
"""
from __future__ import annotations

import secrets
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from .audio import load_prompt_audio
from .engines.base import Engine, Progress, Style, Voice
from .errors import EngineError, ServerBusyError, StudioError, UserInputError
from . import metrics
from .log import request_logger
from .modes import MODE_IDS, get_mode
from .outputs import output_path, remove_expired, write_wav_atomic
from .text.frontend import TextFrontend

MAX_SEED = 2**32 - 1


@dataclass
class SynthesisRequest:
    text: str
    mode: str = "zero_shot"
    prompt_wav: str | None = None
    prompt_text: str = ""
    instruct_text: str = ""
    seed: int | None = None          # None or negative: pick one (and log it, so it can be repeated)
    speed: float = 1.0
    stream: bool = False
    normalize: bool = True


@dataclass
class ServiceConfig:
    outputs_dir: Path = Path("outputs")
    max_text_chars: int = 2000
    max_piece_chars: int = 80
    pause_seconds: float = 0.2       # silence between sentence pieces in the joined output
    workers: int = 2                 # requests synthesised at once
    queue_size: int = 8              # requests allowed to wait beyond those
    retention_days: float = 7.0
    voice_cache_size: int = 16


@dataclass
class SynthesisResult:
    request_id: str
    path: Path
    sample_rate: int
    audio_seconds: float
    rtf: float
    seed: int
    notices: list[str] = field(default_factory=list)


@dataclass
class Event:
    """What `run` yields: audio chunks as they are made, notices for the user, and the final result."""
    chunk: np.ndarray | None = None
    notice: str | None = None
    result: SynthesisResult | None = None


class SynthesisService:
    def __init__(self, engine: Engine, config: ServiceConfig | None = None,
                 frontend: TextFrontend | None = None):
        self.engine = engine
        self.config = config or ServiceConfig()
        self.frontend = frontend or TextFrontend()
        self.started = time.time()
        self._slots = threading.BoundedSemaphore(self.config.workers)
        self._lock = threading.Lock()
        self._waiting = 0
        self._active = 0
        self._voices: OrderedDict[tuple, Voice] = OrderedDict()

    # ---- operations -------------------------------------------------------------------------
    def stats(self) -> dict:
        with self._lock:
            metrics.BUSY_WORKERS.set(self._active)
            metrics.QUEUE_DEPTH.set(self._waiting)
            return {"busy_workers": self._active, "queue_depth": self._waiting, "workers": self.config.workers,
                    "queue_size": self.config.queue_size}

    def clean_outputs(self) -> list[Path]:
        return remove_expired(self.config.outputs_dir, self.config.retention_days)

    @contextmanager
    def _admission(self, log):
        with self._lock:
            if self._waiting >= self.config.queue_size and self._active >= self.config.workers:
                log.warning(f"refused: server busy ({self._active} synthesising, {self._waiting} waiting)")
                raise ServerBusyError(
                    f"The server is busy: {self._active} requests are being synthesised and {self._waiting} are "
                    f"waiting. Please try again in a minute.")
            self._waiting += 1
        acquired = False
        try:
            self._slots.acquire()
            acquired = True
            with self._lock:
                self._waiting -= 1
                self._active += 1
            yield
        finally:
            with self._lock:
                if acquired:
                    self._active -= 1
                else:
                    self._waiting -= 1
            if acquired:
                self._slots.release()

    # ---- the request ------------------------------------------------------------------------
    def synthesize(self, request: SynthesisRequest, request_id: str | None = None) -> SynthesisResult:
        result = None
        for event in self.run(request, request_id):
            if event.result is not None:
                result = event.result
        assert result is not None
        return result

    def run(self, request: SynthesisRequest, request_id: str | None = None) -> Iterator[Event]:
        """Serve one request, yielding events; raises StudioError subclasses with a user message."""
        request_id = request_id or uuid.uuid4().hex[:6]
        log = request_logger(request_id)
        seed = request.seed if request.seed is not None and request.seed >= 0 else secrets.randbelow(MAX_SEED)
        stage = "validate"
        try:
            log.info(f"received {request.mode}, text {len(request.text or '')} chars, seed {seed}, "
                     f"speed {request.speed:g}, stream {'on' if request.stream else 'off'}")
            self._validate(request, seed)
            with self._admission(log):
                stage = "text"
                pieces, text_notices = self._prepare_text(request, log)
                stage = "voice"
                voice = self._prepare_voice(request, log)
                style = Style(mode=request.mode, instruct_text=request.instruct_text.strip(), speed=request.speed)
                notices = text_notices + self.engine.style_notices(style)
                for notice in notices:
                    log.warning(notice)
                    yield Event(notice=notice)
                stage = "synthesize"
                started = time.perf_counter()
                audio: list[np.ndarray] = []
                engine_notices: list[str] = []     # filled (and logged) by the engine's progress callback
                shown = 0
                for chunk in self._synthesize(pieces, voice, style, seed, request.stream, log, engine_notices):
                    audio.append(chunk)
                    for notice in engine_notices[shown:]:
                        yield Event(notice=notice)
                    shown = len(engine_notices)
                    if request.stream:
                        yield Event(chunk=chunk)
                samples = np.concatenate(audio) if audio else np.zeros(0, np.float32)
                elapsed = time.perf_counter() - started
                if samples.size == 0 or not np.isfinite(samples).all():
                    raise EngineError("the engine produced no usable audio", stage="synthesize")
                stage = "save"
                path = write_wav_atomic(output_path(self.config.outputs_dir, request_id), samples,
                                        self.engine.sample_rate)
                seconds = len(samples) / self.engine.sample_rate
                rtf = elapsed / max(seconds, 1e-6)
                log.success(f"saved {path.as_posix()} ({seconds:.2f} s audio, RTF {rtf:.2f})")
                metrics.REQUESTS.labels(request.mode, "ok").inc()
                metrics.AUDIO_SECONDS.inc(seconds)
                metrics.RTF.observe(rtf)
                if not request.stream:
                    yield Event(chunk=samples)
                yield Event(result=SynthesisResult(request_id, path, self.engine.sample_rate, seconds, rtf,
                                                   seed, notices + engine_notices))
        except ServerBusyError:
            self._count_failure(request.mode, "busy")
            raise
        except UserInputError as err:
            self._count_failure(request.mode, "refused")
            log.warning(f"refused at {stage}: {err}")
            raise
        except StudioError as err:       # EngineError, ModelDirError: ours to fix, not the user's
            self._count_failure(request.mode, "error")
            log.error(f"failed during {getattr(err, 'stage', stage)}: {err}")
            raise
        except Exception as err:
            self._count_failure(request.mode, "error")
            log.error(f"internal error at {stage}: {type(err).__name__}: {err}\n{traceback.format_exc()}")
            raise EngineError(f"Internal error while {stage} (request {request_id}). The details are in "
                              f"logs/runtime.log; please report them.", stage=stage) from err

    def _count_failure(self, mode: str, outcome: str) -> None:
        metrics.REQUESTS.labels(mode if mode in MODE_IDS else "unknown", outcome).inc()

    # ---- stages -----------------------------------------------------------------------------
    def _validate(self, request: SynthesisRequest, seed: int) -> None:
        text = (request.text or "").strip()
        if not text:
            raise UserInputError("The text to synthesise is empty. Type what the voice should say.")
        if len(text) > self.config.max_text_chars:
            raise UserInputError(f"The text is {len(text)} characters long; the limit is {self.config.max_text_chars}. "
                                 f"Shorten it or split it into several requests.")
        mode = get_mode(request.mode)
        if mode is None:
            raise UserInputError(f"Unknown mode '{request.mode}'. Choose one of: {', '.join(MODE_IDS)}.")
        if mode.id not in self.engine.capabilities().modes:
            raise UserInputError(f"The {self.engine.name} engine cannot do {mode.label}.")
        if not request.prompt_wav:
            raise UserInputError(f"{mode.label} needs a prompt recording: upload or record "
                                 f"3–15 s of the voice to clone.")
        if mode.needs_transcript and not request.prompt_text.strip():
            raise UserInputError(f"{mode.label} needs the transcript of the prompt recording. Type exactly "
                                 "what is said in it, or use 跨语种复刻 (cross-lingual), which needs none.")
        if mode.needs_instruction and not request.instruct_text.strip():
            raise UserInputError(f"{mode.label} needs an instruction, e.g. 请用四川话说 or "
                                 "'speak very fast'. Pick a preset or type one.")
        if not 0.5 <= float(request.speed) <= 2.0:
            raise UserInputError(f"Speed {request.speed} is out of range; choose between 0.5 and 2.0.")
        if not 0 <= seed <= MAX_SEED:
            raise UserInputError(f"Seed {seed} is out of range; use a whole number from 0 to {MAX_SEED}.")

    def _prepare_text(self, request: SynthesisRequest, log) -> tuple[list[str], list[str]]:
        result = self.frontend.process(request.text, normalize=request.normalize,
                                       max_piece_chars=self.config.max_piece_chars)
        chars = sum(len(p) for p in result.pieces)
        log.info(f"text: {len(result.pieces)} piece(s), {chars} chars after normalization")
        return result.pieces, list(result.notices)

    def _prepare_voice(self, request: SynthesisRequest, log) -> Voice:
        loaded = load_prompt_audio(request.prompt_wav)
        rates = "/".join(str(r) for r in self.engine.capabilities().prompt_sample_rates)
        log.info(f"prompt audio: {loaded.describe()} → {rates} Hz for the engine")
        for warning in loaded.warnings:
            log.warning(warning)
        prompt_text = self._prepare_transcript(request) if get_mode(request.mode).needs_transcript else None
        key = (self.engine.name, loaded.audio.sha1, prompt_text)
        with self._lock:
            voice = self._voices.get(key)
            if voice is not None:
                self._voices.move_to_end(key)
        if voice is not None:
            log.info("voice features ready (cache hit)")
            return voice
        started = time.perf_counter()
        voice = self.engine.prepare_voice(loaded.audio, prompt_text)
        with self._lock:
            self._voices[key] = voice
            while len(self._voices) > self.config.voice_cache_size:
                self._voices.popitem(last=False)
        log.info(f"voice features ready (cache miss, {time.perf_counter() - started:.2f} s)")
        return voice

    def _prepare_transcript(self, request: SynthesisRequest) -> str:
        """The prompt transcript is read by the model alongside the text, so it gets the same normalization."""
        try:
            return self.frontend.process(request.prompt_text, normalize=request.normalize,
                                         max_piece_chars=10**6).marked
        except UserInputError as err:
            raise UserInputError(f"In the prompt transcript: {err}") from err

    def _synthesize(self, pieces: list[str], voice: Voice, style: Style, seed: int, stream: bool,
                    log, notices: list[str]) -> Iterator[np.ndarray]:
        pause = np.zeros(int(self.config.pause_seconds * self.engine.sample_rate), np.float32)
        total = len(pieces)
        for index, piece in enumerate(pieces, start=1):
            last_logged = [0.0]

            def on_progress(progress: Progress, index=index, last_logged=last_logged) -> None:
                if progress.notice:
                    if progress.message not in notices:
                        log.warning(progress.message)
                        notices.append(progress.message)
                    return
                now = time.perf_counter()
                if now - last_logged[0] >= 0.5:    # a steady trickle in the log, not one line per token
                    last_logged[0] = now
                    log.info(f"piece {index}/{total}: {progress.message}")

            log.info(f"piece {index}/{total}: synthesising {len(piece)} chars")
            produced = 0
            # Seed per piece: the same piece at the same position gives the same audio, however it is streamed.
            for chunk in self.engine.synthesize(piece, voice, style, (seed + index - 1) % (MAX_SEED + 1),
                                                on_progress, stream=stream):
                chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
                produced += len(chunk)
                yield chunk
            log.info(f"piece {index}/{total} vocoded ({produced / self.engine.sample_rate:.2f} s audio)")
            if index < total and pause.size:
                yield pause
