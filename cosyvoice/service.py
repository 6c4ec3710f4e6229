"""The one place a request lives: admit → validate → text → voice → synthesize → save → report.

The UI, the Gradio API and the CLI all call `SynthesisService.run`, so every path gets the same
checks, the same messages, the same log lines and the same saved files. Clients hand over raw
values (whatever JSON or a form carried); `validate_request` is the only place they become typed.
"""
from __future__ import annotations

import argparse
import errno
import math
import secrets
import tempfile
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from . import metrics
from opentelemetry import trace

from .audio import load_prompt_audio
from .engines.base import Engine, Progress, PromptAudio, Style, Voice
from .errors import EngineError, OutputsError, ServerBusyError, StudioError, UserInputError
from .jobs import JobRegistry
from .log import request_logger
from .mastering import master_events
from .modes import MODE_IDS, MODES, Mode, get_mode
from .outputs import output_path, remove_expired, remove_stale_partials, write_wav_atomic
from .history import request_record, write_sidecar
from .text.frontend import Pause, TextFrontend, format_preview
from .tracing import tracer
from .voices import VoiceLibrary

MAX_SEED = 2**32 - 1
SPEED_RANGE = (0.5, 2.0)


@dataclass
class SynthesisRequest:
    """What a client sent, untyped: the service checks every field before using it."""
    text: Any
    mode: Any = "zero_shot"
    prompt_wav: Any = None
    prompt_text: Any = ""
    instruct_text: Any = ""
    seed: Any = None                 # None, "" or negative: pick one (and log it, so it can be repeated)
    speed: Any = 1.0
    stream: Any = False
    normalize: Any = True
    voice: Any = None                # a saved voice's name or id (cosyvoice.voices), in place of prompt_wav


@dataclass(frozen=True)
class ValidRequest:
    text: str
    mode: Mode
    prompt_wav: str
    prompt_text: str
    instruct_text: str
    seed: int
    speed: float
    stream: bool
    normalize: bool
    voice: str | None = None


@dataclass
class ServiceConfig:
    outputs_dir: Path = Path("outputs")
    max_text_chars: int = 2000
    max_prompt_text_chars: int = 300     # a 30 s prompt holds far fewer characters than this
    max_instruct_chars: int = 200
    max_piece_units: int = 80            # the official packing: pieces of up to 80 units (zh chars, en tokens)
    workers: int = 2                     # requests synthesised at once
    queue_size: int = 8                  # requests allowed to wait beyond those
    retention_days: float = 7.0
    voice_cache_size: int = 16
    voices_dir: Path = Path("voices")    # the saved-voice library (cosyvoice.voices)
    loudness_lufs: float | None = None   # output loudness target (cosyvoice.mastering); None: only the limiter

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ServiceConfig":
        return cls(outputs_dir=args.outputs_dir, max_text_chars=args.max_text_chars, workers=args.concurrency,
                   queue_size=args.queue_size, retention_days=args.outputs_retention_days,
                   voices_dir=args.voices_dir, loudness_lufs=args.loudness)


def add_service_args(parser: argparse.ArgumentParser, root: Path) -> None:
    """Flags every front end (WebUI, CLI) shares for the service; ServiceConfig.from_args reads them."""
    parser.add_argument("--max-text-chars", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=2, help="requests synthesised at once")
    parser.add_argument("--queue-size", type=int, default=8, help="requests allowed to wait")
    parser.add_argument("--outputs-retention-days", type=float, default=7.0)
    parser.add_argument("--outputs-dir", type=Path, default=root / "outputs")
    parser.add_argument("--g2p-dict", type=Path, default=root / "configs" / "G2P_replace_dict.jsonl")
    parser.add_argument("--voices-dir", type=Path, default=root / "voices",
                        help="saved voices (never inside the model dir)")
    parser.add_argument("--loudness", type=float, default=None, metavar="LUFS",
                        help="bring every output to this loudness, e.g. -16 (default: peaks limited to -1 dBFS only)")


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
    """What `run` yields: queue and progress updates, audio chunks as they are made, notices, the result."""
    chunk: np.ndarray | None = None
    notice: str | None = None
    progress: tuple[float | None, str] | None = None    # (fraction done or None, what is happening)
    result: SynthesisResult | None = None


class _Stages:
    """Where a request is: each stage is a trace span, a duration sample and the job's current stage,
    so a failure can also say which stage it happened in."""

    QUEUED = ("validate", "queue")

    def __init__(self, jobs: JobRegistry, job_id: str, span):
        self.jobs, self.job_id, self.span = jobs, job_id, span
        self.current = "validate"

    @contextmanager
    def __call__(self, name: str) -> Iterator[Any]:
        self.current = name
        self.jobs.update(self.job_id, stage=name, **({} if name in self.QUEUED else {"state": "running"}))
        span = tracer().start_span(name, context=trace.set_span_in_context(self.span))
        started = time.perf_counter()
        try:
            yield span
        except BaseException as err:
            if not isinstance(err, GeneratorExit):
                span.set_status(trace.Status(trace.StatusCode.ERROR, str(err)[:200]))
            raise
        finally:
            span.end()
            metrics.STAGE_DURATION.labels(name).observe(time.perf_counter() - started)


# ---- validation: raw client values → typed fields, one message per kind of mistake -------------------

def _text_field(value: Any, what: str, limit: int, required: bool) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise UserInputError(f"The {what} must be text (a string), not {type(value).__name__}.")
    value = value.strip()
    if required and not value:
        raise UserInputError(f"The {what} is empty. Type what the voice should say." if what == "text"
                             else f"The {what} is empty.")
    if len(value) > limit:
        raise UserInputError(f"The {what} is {len(value)} characters long; the limit is {limit}. "
                             f"Shorten it{' or split it into several requests' if what == 'text' else ''}.")
    return value


def _number_field(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise UserInputError(f"The {what} must be a number, not true/false.")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise UserInputError(f"The {what} must be a number; got {value[:20]!r}.") from None
    if not isinstance(value, (int, float)):
        raise UserInputError(f"The {what} must be a number, not {type(value).__name__}.")
    if not math.isfinite(value):
        raise UserInputError(f"The {what} must be a finite number; got {value}.")
    return float(value)


def _seed_field(value: Any) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    number = _number_field(value, "seed")
    if number != int(number):
        raise UserInputError(f"Seed {value} is not a whole number; use a whole number from 0 to {MAX_SEED}.")
    if number < 0:
        return None
    if number > MAX_SEED:
        raise UserInputError(f"Seed {int(number)} is out of range; use a whole number from 0 to {MAX_SEED}.")
    return int(number)


def _switch_field(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise UserInputError(f"The {what} switch must be true or false; got {str(value)[:20]!r}.")


def validate_request(request: SynthesisRequest, config: ServiceConfig, engine: Engine) -> ValidRequest:
    """Every check on what a client sent, in the order a user fills the form."""
    if not isinstance(request.mode, str) or get_mode(request.mode) is None:
        raise UserInputError(f"Unknown mode {str(request.mode)[:30]!r}. Choose one of: {', '.join(MODE_IDS)}.")
    mode = get_mode(request.mode)
    if mode.id not in engine.capabilities().modes:
        raise UserInputError(f"The {engine.name} engine cannot do {mode.label}.")
    text = _text_field(request.text, "text", config.max_text_chars, required=True)
    voice = _voice_field(request.voice, request.prompt_wav)
    if voice is None and (not request.prompt_wav or not isinstance(request.prompt_wav, str)):
        raise UserInputError(f"{mode.label} needs a prompt recording: upload or record 3–15 s of the voice to clone.")
    prompt_text = _text_field(request.prompt_text, "prompt transcript", config.max_prompt_text_chars,
                              required=False)
    if mode.needs_transcript and not prompt_text and voice is None:    # a saved voice brings its own
        raise UserInputError(f"{mode.label} needs the transcript of the prompt recording. Type exactly "
                             "what is said in it, or use 跨语种复刻 (cross-lingual), which needs none.")
    instruct_text = _text_field(request.instruct_text, "instruction", config.max_instruct_chars, required=False)
    if mode.needs_instruction and not instruct_text:
        raise UserInputError(f"{mode.label} needs an instruction, e.g. 请用四川话说 or "
                             "'speak very fast'. Pick a preset or type one.")
    speed = _number_field(request.speed, "speed")
    if not SPEED_RANGE[0] <= speed <= SPEED_RANGE[1]:
        raise UserInputError(f"Speed {speed:g} is out of range; choose between {SPEED_RANGE[0]} and {SPEED_RANGE[1]}.")
    seed = _seed_field(request.seed)
    return ValidRequest(text=text, mode=mode, prompt_wav=request.prompt_wav, prompt_text=prompt_text,
                        instruct_text=instruct_text, seed=secrets.randbelow(MAX_SEED) if seed is None else seed,
                        speed=speed, stream=_switch_field(request.stream, "stream"),
                        normalize=_switch_field(request.normalize, "normalize"), voice=voice)


def _voice_field(value: Any, prompt_wav: Any) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str) or len(value) > 100:
        raise UserInputError("The voice must be the name or id of a saved voice (text, at most 100 characters).")
    if prompt_wav:
        raise UserInputError("Give either a saved voice or a prompt recording, not both.")
    return value.strip()


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class SynthesisService:
    def __init__(self, engine: Engine, config: ServiceConfig | None = None,
                 frontend: TextFrontend | None = None):
        self.engine = engine
        self.config = config or ServiceConfig()
        self.frontend = frontend or TextFrontend()
        if self.frontend.count_tokens is None:       # English pieces are packed in the model's own tokens
            self.frontend.count_tokens = engine.text_token_counter()
        self.started = time.time()
        self.jobs = JobRegistry()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)   # a worker freed, a request queued or left
        self._queue: list[int] = []                        # tickets of waiting requests, first come first
        self._next_ticket = 0
        self._active = 0
        self._draining = False
        self._voices: OrderedDict[tuple, Voice] = OrderedDict()
        self.voices = VoiceLibrary(self.config.voices_dir)
        self._outputs_checked: tuple[float, str | None] = (0.0, None)
        metrics.BUSY_WORKERS.set_function(lambda: self._active)
        metrics.QUEUE_DEPTH.set_function(lambda: len(self._queue))

    # ---- operations -------------------------------------------------------------------------
    def stats(self) -> dict:
        with self._lock:
            return {"busy_workers": self._active, "queue_depth": len(self._queue), "workers": self.config.workers,
                    "queue_size": self.config.queue_size, "draining": self._draining}

    def clean_outputs(self) -> list[Path]:
        return remove_expired(self.config.outputs_dir, self.config.retention_days)

    def remove_stale_partials(self) -> list[Path]:
        return remove_stale_partials(self.config.outputs_dir)

    def outputs_problem(self, max_age_s: float = 2.0) -> str | None:
        """Why results cannot be saved right now (None when outputs/ takes a file); checked by a real write."""
        checked_at, problem = self._outputs_checked
        if time.monotonic() - checked_at < max_age_s:
            return problem
        folder = Path(self.config.outputs_dir)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".ready.", suffix=".partial"):
                pass
            problem = None
        except OSError as err:
            problem = f"cannot write to {folder}: {_disk_advice(err)}"
        self._outputs_checked = (time.monotonic(), problem)
        return problem

    def drain(self) -> None:
        """Stop admitting requests (shutdown); those already admitted run to the end."""
        with self._lock:
            self._draining = True

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._active or self._queue:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True

    def _enter_queue(self, log) -> int:
        """A ticket in the queue, or ServerBusyError when it is full (or the server is stopping)."""
        with self._lock:
            if self._draining:
                log.warning("refused: the server is shutting down")
                raise ServerBusyError("The server is shutting down for a restart. Please try again in a minute.")
            waiting = len(self._queue)
            if waiting >= self.config.queue_size and self._active >= self.config.workers:
                log.warning(f"refused: server busy ({self._active} synthesising, {waiting} waiting)")
                raise ServerBusyError(
                    f"The server is busy: {self._active} requests are being synthesised and {waiting} are "
                    f"waiting. Please try again in a minute.")
            ticket = self._next_ticket
            self._next_ticket += 1
            self._queue.append(ticket)
            return ticket

    def _wait_for_worker(self, ticket: int, job_id: str, log) -> Iterator[Event]:
        """Wait in line (first come, first served), telling the client its place every half second."""
        started = time.monotonic()
        first_position = None
        while True:
            with self._changed:
                if self._queue[0] == ticket and self._active < self.config.workers:
                    self._queue.pop(0)
                    self._active += 1
                    break
                position, total = self._queue.index(ticket) + 1, len(self._queue)
                self._changed.wait(0.5)
            first_position = first_position or position
            waited = time.monotonic() - started
            self.jobs.update(job_id, queue_position=position, progress=f"queued {position}/{total}")
            yield Event(progress=(None, f"排队中 Queued: position {position} of {total}, waited {waited:.0f} s"))
        waited = time.monotonic() - started
        metrics.QUEUE_WAIT.observe(waited)
        self.jobs.update(job_id, queue_position=None, queue_wait_s=round(waited, 2), started_at=time.time())
        if first_position:
            log.bind(figures={"queue_wait_s": round(waited, 2), "position": first_position}).info(
                f"waited {waited:.1f} s in queue (position {first_position})")

    @contextmanager
    def _worker(self, log, request_id: str) -> Iterator[None]:
        """A worker for work that reports no progress (saving a voice): queued and limited like a request."""
        ticket, admitted = self._enter_queue(log), False
        try:
            for _ in self._wait_for_worker(ticket, request_id, log):
                pass
            admitted = True
            yield
        finally:
            self._leave(ticket, admitted)

    def _leave(self, ticket: int, admitted: bool) -> None:
        with self._changed:
            if admitted:
                self._active -= 1
            elif ticket in self._queue:
                self._queue.remove(ticket)
            self._changed.notify_all()

    def preview_text(self, text: Any, normalize: Any = True) -> str:
        """The frontend's view of a text (normalized, markup, pieces, pauses), checked like a request's text."""
        text = _text_field(text, "text", self.config.max_text_chars, required=True)
        result = self.frontend.process(text, normalize=_switch_field(normalize, "normalize"),
                                       max_piece_units=self.config.max_piece_units)
        return format_preview(result)

    def warm_up(self, text: str, prompt: PromptAudio, transcript: str) -> float:
        """One synthesis through the engine, nothing saved or counted, so the first user pays no lazy set-up.

        Returns the seconds of audio made.
        """
        mode = MODES[0]
        voice = self.engine.prepare_voice(prompt, self.frontend.process(transcript).marked
                                          if mode.needs_transcript else None)
        samples = 0
        for piece in self.frontend.process(text).pieces:
            for chunk in self.engine.synthesize(piece, voice, Style(mode=mode.id), 0, lambda progress: None):
                samples += len(chunk)
        return samples / self.engine.sample_rate

    # ---- the request ------------------------------------------------------------------------
    def synthesize(self, request: SynthesisRequest, request_id: str | None = None) -> SynthesisResult:
        for event in self.run(request, request_id):
            if event.result is not None:
                return event.result
        raise EngineError("the request ended without a result", stage="report")

    def run(self, request: SynthesisRequest, request_id: str | None = None) -> Iterator[Event]:
        """Serve one request, yielding events; raises StudioError subclasses with a user message."""
        request_id = request_id or uuid.uuid4().hex[:6]
        log = request_logger(request_id)
        mode_label = request.mode if isinstance(request.mode, str) and request.mode in MODE_IDS else "unknown"
        self.jobs.open(request_id, mode_label)
        received = time.time()
        span = tracer().start_span("synthesis request", attributes={"request.id": request_id, "mode": mode_label,
                                                                    "engine": self.engine.name})
        stage = _Stages(self.jobs, request_id, span)
        try:
            with stage("validate"):
                valid = validate_request(request, self.config, self.engine)
            log.info(f"received {valid.mode.id}, text {len(valid.text)} chars, seed {valid.seed}, "
                     f"speed {valid.speed:g}, stream {'on' if valid.stream else 'off'}")
            if valid.instruct_text:
                log.info(f"instruction: {_clip(valid.instruct_text)}")
            span.set_attributes({"text.chars": len(valid.text), "seed": valid.seed})
            ticket, admitted = None, False
            try:
                with stage("queue"):
                    ticket = self._enter_queue(log)
                    yield from self._wait_for_worker(ticket, request_id, log)
                admitted = True
                yield from self._pipeline(valid, request_id, log, stage, span, received)
            finally:
                if ticket is not None:
                    self._leave(ticket, admitted)
            self.jobs.update(request_id, state="done", stage="done", progress="saved")
        except ServerBusyError as err:
            self._ended(request_id, mode_label, "busy", "refused", err, span)
            raise
        except UserInputError as err:
            self._ended(request_id, mode_label, "refused", "refused", err, span)
            log.warning(f"refused at {stage.current}: {err}")
            raise
        except StudioError as err:       # EngineError, ModelDirError, OutputsError: ours to fix, not the user's
            self._ended(request_id, mode_label, "error", "failed", err, span)
            log.error(f"failed during {getattr(err, 'stage', stage.current)}: {err}")
            raise
        except Exception as err:
            self._ended(request_id, mode_label, "error", "failed", err, span)
            log.error(f"internal error at {stage.current}: {type(err).__name__}: {err}\n{traceback.format_exc()}")
            raise EngineError(f"Internal error while {stage.current} (request {request_id}). The details are in "
                              f"logs/runtime.log; please report them.", stage=stage.current) from err
        finally:
            span.end()

    def _ended(self, request_id: str, mode: str, outcome: str, state: str, err: Exception, span) -> None:
        metrics.REQUESTS.labels(mode, outcome).inc()
        self.jobs.update(request_id, state=state, error=str(err)[:300])
        span.set_status(trace.Status(trace.StatusCode.ERROR, outcome))
        span.set_attribute("outcome", outcome)

    def _pipeline(self, request: ValidRequest, request_id: str, log, stage: _Stages, span,
                  received: float) -> Iterator[Event]:
        with stage("text"):
            items, notices = self._prepare_text(request, log)
        with stage("voice"):
            voice = self._prepare_voice(request, log, notices)
        style = Style(mode=request.mode.id, instruct_text=request.instruct_text, speed=request.speed)
        notices += self.engine.style_notices(style)
        for notice in notices:
            log.warning(notice)
            yield Event(notice=notice)
        with stage("synthesize") as synthesize_span:
            started = time.perf_counter()
            audio: list[np.ndarray] = []
            for event in master_events(self._synthesize(items, voice, style, request.seed, request.stream, log,
                                                        request_id, synthesize_span),
                                       self.engine.sample_rate, request.stream, self.config.loudness_lufs):
                if event.chunk is not None:
                    if not audio:
                        metrics.TIME_TO_FIRST_AUDIO.observe(time.time() - received)
                    audio.append(event.chunk)
                    if not request.stream:
                        continue
                if event.notice is not None:
                    notices.append(event.notice)
                yield event
            samples = np.concatenate(audio) if audio else np.zeros(0, np.float32)
            elapsed = time.perf_counter() - started
            if samples.size == 0 or not np.isfinite(samples).all():
                raise EngineError("the engine produced no usable audio", stage="synthesize")
        with stage("save"):
            path = self._save(request_id, samples)
        seconds = len(samples) / self.engine.sample_rate
        self._record_history(path, request, request_id, seconds, log)
        rtf = elapsed / max(seconds, 1e-6)
        log.bind(figures={"audio_s": round(seconds, 3), "rtf": round(rtf, 3), "output": path.name}).success(
            f"saved {path.as_posix()} ({seconds:.2f} s audio, RTF {rtf:.2f})")
        metrics.REQUESTS.labels(request.mode.id, "ok").inc()
        metrics.AUDIO_SECONDS.inc(seconds)
        metrics.RTF.observe(rtf)
        metrics.REQUEST_DURATION.labels(request.mode.id).observe(time.time() - received)
        self.jobs.update(request_id, audio_s=round(seconds, 2), rtf=round(rtf, 3))
        span.set_attributes({"audio.seconds": round(seconds, 3), "rtf": round(rtf, 3), "output": path.name})
        if not request.stream:
            yield Event(chunk=samples)
        yield Event(result=SynthesisResult(request_id, path, self.engine.sample_rate, seconds, rtf,
                                           request.seed, notices))

    # ---- stages -----------------------------------------------------------------------------
    def _prepare_text(self, request: ValidRequest, log) -> tuple[list[str | Pause], list[str]]:
        result = self.frontend.process(request.text, normalize=request.normalize,
                                       max_piece_units=self.config.max_piece_units)
        pauses = f", {len(result.pauses)} pause(s)" if result.pauses else ""
        log.info(f"text: {len(result.pieces)} piece(s){pauses}, {sum(result.piece_units)} {result.unit} "
                 f"after normalization")
        return result.items, list(result.notices)

    def _prepare_voice(self, request: ValidRequest, log, notices: list[str]) -> Voice:
        if request.voice is not None:
            return self._saved_voice(request, log, notices)
        loaded = load_prompt_audio(request.prompt_wav)
        rates = "/".join(str(r) for r in self.engine.capabilities().prompt_sample_rates)
        log.info(f"prompt audio: {loaded.describe()} → {rates} Hz for the engine")
        notices.extend(loaded.warnings)         # logged and shown with the other notices
        prompt_text = self._prepare_transcript(request) if request.mode.needs_transcript else None
        key = (self.engine.name, loaded.audio.sha1, prompt_text)
        with self._lock:
            voice = self._voices.get(key)
            if voice is not None:
                self._voices.move_to_end(key)
        if voice is not None:
            metrics.VOICE_CACHE.labels("hit").inc()
            log.info("voice features ready (cache hit)")
            return voice
        metrics.VOICE_CACHE.labels("miss").inc()
        started = time.perf_counter()
        voice = self.engine.prepare_voice(loaded.audio, prompt_text)
        with self._lock:
            self._voices[key] = voice
            while len(self._voices) > self.config.voice_cache_size:
                self._voices.popitem(last=False)
        log.info(f"voice features ready (cache miss, {time.perf_counter() - started:.2f} s)")
        return voice

    def _prepare_transcript(self, request: ValidRequest, transcript: str | None = None) -> str:
        """The prompt transcript is read by the model alongside the text, so it gets the same normalization."""
        try:
            return self.frontend.process(request.prompt_text if transcript is None else transcript,
                                         normalize=request.normalize).marked
        except UserInputError as err:
            raise UserInputError(f"In the prompt transcript: {err}") from err

    # ---- saved voices (cosyvoice.voices, #13) -------------------------------------------------
    def _saved_voice(self, request: ValidRequest, log, notices: list[str]) -> Voice:
        """A saved voice: its stored features are loaded (not extracted) unless the model changed."""
        entry = self.voices.resolve(request.voice)
        if request.mode.needs_transcript and not entry.transcript:
            raise UserInputError(f"Voice {entry.name!r} was saved without a transcript, which {request.mode.label} "
                                 f"needs. Use 跨语种复刻 (cross-lingual), or save the voice again with its transcript.")
        prompt_text = self._prepare_transcript(request, entry.transcript) if request.mode.needs_transcript else None
        log.info(f"voice {entry.name!r} (id {entry.id}): saved {entry.duration:.2f} s recording"
                 f"{', transcript ' + repr(_clip(entry.transcript, 30)) if prompt_text else ''}")
        key = ("saved", self.engine.name, entry.id, entry.sha256, prompt_text)
        with self._lock:
            voice = self._voices.get(key)
            if voice is not None:
                self._voices.move_to_end(key)
        if voice is not None:
            log.info("voice features ready (cache hit)")
            return voice
        started = time.perf_counter()
        voice, notice = self.voices.load_voice(entry, self.engine, prompt_text)
        with self._lock:
            self._voices[key] = voice
            while len(self._voices) > self.config.voice_cache_size:
                self._voices.popitem(last=False)
        if notice:
            notices.append(notice)
            log.info(f"voice features ready (recomputed from the saved recording, "
                     f"{time.perf_counter() - started:.2f} s)")
        else:
            log.info(f"voice features ready (loaded from the voice library, not extracted: "
                     f"{time.perf_counter() - started:.3f} s)")
        return voice

    def save_voice(self, name: Any, audio_path: Any, transcript: Any = "", language: Any = "", notes: Any = "",
                   request_id: str | None = None):
        """Save a prompt recording to the library with its features; admitted and logged like a request."""
        request_id = request_id or uuid.uuid4().hex[:6]
        log = request_logger(request_id)
        if not audio_path or not isinstance(audio_path, str):
            raise UserInputError("Saving a voice needs its recording: upload or record 3–15 s of the voice.")
        log.info(f"save voice {str(name)[:64]!r}: extracting features with {self.engine.name}")
        try:
            with self._worker(log, request_id):
                entry = self.voices.add(name, audio_path, transcript, language, notes, engine=self.engine)
        except UserInputError as err:
            log.warning(f"voice not saved: {err}")
            raise
        except StudioError as err:
            log.error(f"voice not saved: {err}")
            raise
        log.success(f"saved voice {entry.name!r} (id {entry.id}) with {self.engine.name} features")
        return entry

    def _record_history(self, path: Path, request: ValidRequest, request_id: str, seconds: float, log) -> None:
        """The History tab's sidecar beside the WAV; a failure costs the entry, never the result."""
        try:
            write_sidecar(path, request_record(request, request_id, seconds, self.engine.name))
        except OSError as err:
            log.warning(f"result saved, but its history entry could not be written: {err}")

    def _synthesize(self, items: list[str | Pause], voice: Voice, style: Style, seed: int, stream: bool,
                    log, request_id: str, parent_span) -> Iterator[Event]:
        """Pieces in order, each from the engine, with a written pause as exact silence; nothing added between."""
        total = sum(1 for item in items if not isinstance(item, Pause))
        shown: set[str] = set()
        index = 0
        for item in items:
            if isinstance(item, Pause):
                yield Event(chunk=np.zeros(round(item.seconds * self.engine.sample_rate), np.float32))
                continue
            index += 1
            pending: list[Event] = []
            last_logged = 0.0
            engine_span = None

            def on_progress(progress: Progress) -> None:
                nonlocal last_logged, engine_span
                if progress.stage:           # the engine's own parts become child spans of "synthesize"
                    if engine_span is not None:
                        engine_span.end()
                    engine_span = tracer().start_span(progress.stage, attributes={"piece": index},
                                                      context=trace.set_span_in_context(parent_span))
                    return
                if progress.notice:
                    if progress.message not in shown:
                        shown.add(progress.message)
                        log.warning(progress.message)
                        pending.append(Event(notice=progress.message))
                    return
                now = time.perf_counter()
                if now - last_logged >= 0.5:    # a steady trickle in the log, not one line per token
                    last_logged = now
                    log.info(f"piece {index}/{total}: {progress.message}")
                    self.jobs.update(request_id, progress=f"piece {index}/{total}: {progress.message}")
                    pending.append(Event(progress=((index - 1) / total, f"piece {index}/{total}: {progress.message}")))

            log.info(f"piece {index}/{total}: synthesising {len(item)} chars")
            self.jobs.update(request_id, progress=f"piece {index}/{total}")
            yield Event(progress=((index - 1) / total, f"piece {index}/{total}: synthesising"))
            produced = 0
            # Seed per piece: the same piece at the same position gives the same audio, however it is streamed.
            for chunk in self.engine.synthesize(item, voice, style, (seed + index - 1) % (MAX_SEED + 1),
                                                on_progress, stream=stream):
                while pending:
                    yield pending.pop(0)
                chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
                produced += len(chunk)
                yield Event(chunk=chunk)
            if engine_span is not None:
                engine_span.end()
            while pending:
                yield pending.pop(0)
            log.info(f"piece {index}/{total} vocoded ({produced / self.engine.sample_rate:.2f} s audio)")

    def _save(self, request_id: str, samples: np.ndarray) -> Path:
        folder = Path(self.config.outputs_dir)
        try:
            path = write_wav_atomic(output_path(folder, request_id), samples, self.engine.sample_rate)
        except OSError as err:
            self._outputs_checked = (0.0, None)      # let /ready look again now
            raise OutputsError(f"The result could not be saved: cannot write to {folder}: {_disk_advice(err)} "
                               f"The server keeps running; the next request works once this is fixed.") from err
        self._outputs_checked = (time.monotonic(), None)
        return path


def _disk_advice(err: OSError) -> str:
    """Plain words for the disk errors an operator can fix."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full. Free some space there."
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "permission denied (or a read-only disk). Fix the folder's permissions or choose another --outputs-dir."
    if err.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        return "it is not a folder. Remove what is in its place or choose another --outputs-dir."
    return f"{err.strerror or err}. Check the folder, or choose another --outputs-dir."
