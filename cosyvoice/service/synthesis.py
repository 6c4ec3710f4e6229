"""The service: every synthesis (UI, Gradio API, /v1, dialogue, CLI) goes through `SynthesisService`.

A request runs validate → text → voice (resolve, decode) → accepted → admit → features → synthesize
→ save → report. Everything a user can get wrong is found before the "accepted" event (which
carries the seed), so a front end that waits for the first audio never answers success for a
request that fails; a failure after audio started is raised from the event stream for the front
end to turn into an error the client sees. The service is split by job: validation
(cosyvoice.service.validation), `Admission` (the one queue), `VoiceResolver` (lookups and the feature
cache) and `OutputStore` (unique files, free space); `run` only strings them together.
"""
from __future__ import annotations

import dataclasses
import time
import traceback
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from opentelemetry import trace

from cosyvoice.ops import metrics
from cosyvoice.service.admission import Admission
from cosyvoice.service.dialogue import DialogueRequest, DialogueResult, TurnResult
from cosyvoice.engines.base import Engine, Progress, PromptAudio, Style, Voice
from cosyvoice.errors import EngineError, OutputsError, ServerBusyError, StudioError, UserInputError
from cosyvoice.service.history import TEXT_KEPT, request_record
from cosyvoice.service.requests import RequestRegistry
from cosyvoice.ops.log import request_logger
from cosyvoice.audio.mastering import master_events
from cosyvoice.modes import MODE_IDS, MODES
from cosyvoice.service.outputs import OutputStore
from cosyvoice.service.subtitles import PieceSpan, span_records
from cosyvoice.text.frontend import Pause, TextFrontend, format_preview
from cosyvoice.ops.tracing import tracer
from cosyvoice.service.validation import (AUTO, MAX_SEED, SynthesisRequest, ValidRequest, about, auto_mode,  # noqa: F401
                         check_mode_needs, check_mode_supported, switch_field, text_field, validate_dialogue,
                         validate_request)
from cosyvoice.service.voice_resolver import VoiceResolver, VoiceSource
from cosyvoice.settings import ServiceConfig
from cosyvoice.voices.library import VoiceLibrary

@dataclass
class SynthesisResult:
    request_id: str
    path: Path | None                                   # None when the caller asked not to save (save=False)
    sample_rate: int
    audio_seconds: float
    rtf: float
    seed: int
    notices: list[str] = field(default_factory=list)
    pieces: list[dict] = field(default_factory=list)    # {"start", "end" (seconds), "text"} per piece voiced
    samples: np.ndarray | None = None                   # the audio itself, when it was not saved

    @property
    def saved(self) -> Path:
        """The file in outputs/ (every request has one but a save=False request, which has the samples)."""
        if self.path is None:
            raise OutputsError(f"Request {self.request_id} was handed back, not saved.")
        return self.path


@dataclass(frozen=True)
class Accepted:
    """Everything a user could get wrong has been checked; the request now queues. Front ends may
    name the seed (x-seed) and the voice id from here on."""
    request_id: str
    seed: int
    mode: str
    voice_id: str | None
    stream: bool = False             # audio arrives in pieces (else once, after it is saved)


@dataclass
class Event:
    """What `run` yields: acceptance, queue and progress updates, audio chunks, notices, the result."""
    chunk: np.ndarray | None = None
    notice: str | None = None
    progress: tuple[float | None, str] | None = None    # (fraction done or None, what is happening)
    result: SynthesisResult | DialogueResult | None = None
    accepted: Accepted | None = None


@dataclass
class _Plan:
    """A request after the checks that need no engine time: its typed fields, text items and voice."""
    request: ValidRequest
    items: list
    notices: list[str]
    source: VoiceSource
    spans: list[PieceSpan] = field(default_factory=list)   # filled while rendering: where each piece lies


class _Request:
    """One request's id, log, job and trace span; each stage is a span, a duration sample and the job's
    current stage, so a failure can say which stage it happened in."""

    QUEUED = ("validate", "text", "voice", "queue")

    def __init__(self, requests: RequestRegistry, request_id: str | None, kind: str, engine_name: str):
        self.id = request_id or uuid.uuid4().hex[:6]
        self.log = request_logger(self.id)
        self.kind = kind if kind in (*MODE_IDS, "dialogue") else AUTO if kind == AUTO else "unknown"
        self.requests, self.current, self.received = requests, "validate", time.time()
        requests.open(self.id, self.kind)
        self.span = tracer().start_span("synthesis request", attributes={
            "request.id": self.id, "mode": self.kind, "engine": engine_name})

    @contextmanager
    def stage(self, name: str) -> Iterator[Any]:
        self.current = name
        self.requests.update(self.id, stage=name, **({} if name in self.QUEUED else {"state": "running"}))
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

    @contextmanager
    def handled(self) -> Iterator[None]:
        """Every ending logged once, counted once, and told to the user as a StudioError."""
        try:
            try:
                yield
            except StudioError as err:
                err.logged = True            # the lines below are this refusal's log line; front ends add none
                raise
            self.requests.update(self.id, state="done", stage="done", progress="saved")
        except ServerBusyError as err:
            self._ended("busy", "refused", err)
            raise
        except UserInputError as err:
            self._ended("refused", "refused", err)
            self.log.warning(f"refused at {self.current}: {err}")
            raise
        except StudioError as err:       # EngineError, OutputsError: ours to fix, not the user's
            self._ended("error", "failed", err)
            self.log.error(f"failed during {getattr(err, 'stage', self.current)}: {err}")
            raise
        except Exception as err:
            self._ended("error", "failed", err)
            self.log.error(f"internal error at {self.current}: {type(err).__name__}: {err}\n{traceback.format_exc()}")
            internal = EngineError(f"Internal error while {self.current} (request {self.id}). The details are "
                                   f"in logs/runtime.log; please report them.", stage=self.current)
            internal.logged = True
            raise internal from err
        finally:
            self.span.end()

    def _ended(self, outcome: str, state: str, err: Exception) -> None:
        metrics.REQUESTS.labels(self.kind, outcome).inc()
        self.requests.update(self.id, state=state, error=str(err)[:300])
        self.span.set_status(trace.Status(trace.StatusCode.ERROR, outcome))
        self.span.set_attribute("outcome", outcome)


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class SynthesisService:
    """The pipeline; its parts are public so front ends can read (never decide) through them:
    `admission`, `resolver`, `outputs`, `requests` (the RequestRegistry), `library` (the VoiceLibrary), `engine`, `config`."""

    def __init__(self, engine: Engine, config: ServiceConfig | None = None,
                 frontend: TextFrontend | None = None):
        self.engine = engine
        self.config = config or ServiceConfig()
        self.frontend = frontend or TextFrontend()
        if self.frontend.count_tokens is None:       # English pieces are packed in the model's own tokens
            self.frontend.count_tokens = engine.text_token_counter()
        self.started = time.time()
        self.requests = RequestRegistry()
        width = self.config.workers or _engine_parallelism(engine)
        self.admission = Admission(width, self.config.queue_size, self.requests)
        self.library = VoiceLibrary(self.config.voices_dir)
        self.resolver = VoiceResolver(self.library, engine, self.config.voice_cache_size)
        self.outputs = OutputStore(self.config.outputs_dir, self.config.min_free_mb, self.config.retention_days)

    # ---- what the server and the UI read---------------------------------------------------------
    def stats(self) -> dict:
        return self.admission.stats()

    def drain(self) -> None:
        self.admission.drain()

    def wait_idle(self, timeout: float) -> bool:
        return self.admission.wait_idle(timeout)

    def outputs_problem(self, max_age_s: float = 2.0) -> str | None:
        return self.outputs.problem(max_age_s)

    def clean_outputs(self) -> list[Path]:
        return self.outputs.clean_expired()

    def remove_stale_partials(self) -> list[Path]:
        return self.outputs.remove_stale_partials()

    def preview_text(self, text: Any, normalize: Any = True) -> str:
        """The frontend's view of a text (normalized, markup, pieces, pauses), checked like a request's text."""
        text = text_field(text, "text", self.config.max_text_chars, required=True)
        result = self.frontend.process(text, normalize=switch_field(normalize, "normalize"),
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

    # ---- the request ----------------------------------------------------------------------------
    def synthesize(self, request: SynthesisRequest, request_id: str | None = None, *,
                   save: bool = True) -> SynthesisResult:
        return _result_of(self.run(request, request_id, save=save))

    def run(self, request: SynthesisRequest, request_id: str | None = None, *, save: bool = True) -> Iterator[Event]:
        """Serve one request, yielding events; raises StudioError subclasses with a user message.

        `save=False` is for a caller that keeps the audio itself (a job line goes to its job's folder):
        nothing is written to outputs/ or History, and the result carries the samples instead of a path."""
        ctx = _Request(self.requests, request_id, request.mode, self.engine.name)
        with ctx.handled():
            plan = self._prepare(request, ctx, {})
            if save:
                self.outputs.check_space()           # no room for the result: refused before any work
            yield self._accepted(ctx, plan.request)
            with self.admission.held(ctx.log, ctx.id) as ticket:
                yield from self._queue(ctx, ticket)
                samples, elapsed = yield from self._render(plan, ctx)
                pieces = span_records(plan.spans, self.engine.sample_rate)
                path = self._save(ctx, plan, samples, pieces) if save else None
            result = self._report(ctx, plan.request.chosen_mode.id, path, samples, elapsed, plan.request.seed,
                                  plan.notices)
            result.pieces = pieces
            if not save:
                result.samples = samples
            if not plan.request.stream:
                yield Event(chunk=samples)
            yield Event(result=result)

    def _save(self, ctx: _Request, plan: _Plan, samples: np.ndarray, pieces: list[dict]) -> Path:
        with ctx.stage("save"):
            record = request_record(plan.request, ctx.id, len(samples) / self.engine.sample_rate, self.engine.name)
            return self.outputs.save(ctx.id, samples, self.engine.sample_rate, {**record, "pieces": pieces}, ctx.log)

    def _prepare(self, request: SynthesisRequest, ctx: _Request, entries: dict) -> _Plan:
        """validate → text → voice: everything a user can get wrong, before the request queues."""
        with ctx.stage("validate"):
            valid = validate_request(request, self.config, self.engine.capabilities().modes, self.engine.name)
        self._received(ctx, valid)
        with ctx.stage("text"), about("text"):
            items, notices = self._prepare_text(valid, ctx.log)
        with ctx.stage("voice"), about("voice"):
            valid, source = self._prepare_voice(valid, ctx.log, entries)
            notices += source.upload.warnings if source.upload is not None else []
        return _Plan(valid, items, notices, source)

    def _received(self, ctx: _Request, valid: ValidRequest) -> None:
        ctx.log.info(f"received {valid.mode.id if valid.mode else AUTO}, text {len(valid.text)} chars, seed "
                     f"{valid.seed}, speed {valid.speed:g}, stream {'on' if valid.stream else 'off'}")
        if valid.instruct_text:
            ctx.log.info(f"instruction: {_clip(valid.instruct_text)}")

    def _accepted(self, ctx: _Request, valid: ValidRequest) -> Event:
        ctx.log.info(f"accepted: {valid.chosen_mode.id}" + (f" with voice {valid.voice}" if valid.voice else "")
                     + ", waiting for a slot")
        ctx.span.set_attributes({"text.chars": len(valid.text), "seed": valid.seed, "mode": valid.chosen_mode.id})
        return Event(accepted=Accepted(ctx.id, valid.seed, valid.chosen_mode.id, valid.voice, valid.stream))

    def _queue(self, ctx: _Request, ticket) -> Iterator[Event]:
        with ctx.stage("queue"):
            for message in ticket.wait():
                yield Event(progress=(None, message))

    def _render(self, plan: _Plan, ctx: _Request):
        """features → synthesize (a generator of events that returns (samples, seconds taken))."""
        with ctx.stage("features"):
            voice = self.resolver.features(plan.source, ctx.log, plan.notices)
        valid = plan.request
        style = Style(mode=valid.chosen_mode.id, instruct_text=valid.instruct_text, speed=valid.speed)
        plan.notices += self.engine.style_notices(style)
        for notice in plan.notices:
            ctx.log.warning(notice)
            yield Event(notice=notice)
        with ctx.stage("synthesize") as span:
            started = time.perf_counter()
            audio: list[np.ndarray] = []
            engine_events = self._synthesize(plan.items, voice, style, valid.seed, valid.stream, ctx.log, ctx.id, span,
                                             plan.spans)
            for event in master_events(engine_events, self.engine.sample_rate, valid.stream,
                                       self.config.loudness_lufs):
                if event.chunk is not None:
                    if not audio:
                        metrics.TIME_TO_FIRST_AUDIO.observe(time.time() - ctx.received)
                    audio.append(event.chunk)
                    if not valid.stream:
                        continue
                if event.notice is not None:
                    plan.notices.append(event.notice)
                yield event
            samples = np.concatenate(audio) if audio else np.zeros(0, np.float32)
            if samples.size == 0 or not np.isfinite(samples).all():
                raise EngineError("the engine produced no usable audio", stage="synthesize")
        return samples, time.perf_counter() - started

    def _report(self, ctx: _Request, mode: str, path: Path | None, samples: np.ndarray, elapsed: float, seed: int,
                notices: list[str], what: str = "") -> SynthesisResult:
        seconds = len(samples) / self.engine.sample_rate
        rtf = elapsed / max(seconds, 1e-6)
        output = path.name if path is not None else ""
        done = f"saved {what}{path.as_posix()}" if path is not None else "done, handed to the caller (not in outputs/)"
        ctx.log.bind(figures={"audio_s": round(seconds, 3), "rtf": round(rtf, 3), "output": output}).success(
            f"{done} ({seconds:.2f} s audio, RTF {rtf:.2f})")
        metrics.REQUESTS.labels(mode, "ok").inc()
        metrics.AUDIO_SECONDS.inc(seconds)
        metrics.RTF.observe(rtf)
        metrics.REQUEST_DURATION.labels(mode).observe(time.time() - ctx.received)
        self.requests.update(ctx.id, audio_s=round(seconds, 2), rtf=round(rtf, 3))
        ctx.span.set_attributes({"audio.seconds": round(seconds, 3), "rtf": round(rtf, 3), "output": output})
        return SynthesisResult(ctx.id, path, self.engine.sample_rate, seconds, rtf, seed, list(notices))

    # ---- stages -----------------------------------------------------------------------------
    def _prepare_text(self, request: ValidRequest, log) -> tuple[list[str | Pause], list[str]]:
        result = self.frontend.process(request.text, normalize=request.normalize,
                                       max_piece_units=self.config.max_piece_units)
        pauses = f", {len(result.pauses)} pause(s)" if result.pauses else ""
        log.info(f"text: {len(result.pieces)} piece(s){pauses}, {sum(result.piece_units)} {result.unit} "
                 f"after normalization")
        return result.items, list(result.notices)

    def _prepare_voice(self, valid: ValidRequest, log, entries: dict) -> tuple[ValidRequest, VoiceSource]:
        """Resolve the voice once (a saved one by id or name → id; `entries` remembers it for a dialogue),
        decide an "auto" mode from it, and check the mode's needs. The resolved id replaces the name."""
        if valid.voice is None:
            loaded = self.resolver.upload(valid.prompt_wav, log)
            transcript = self._transcript(valid, valid.prompt_text) if valid.chosen_mode.needs_transcript else None
            return valid, VoiceSource(transcript, upload=loaded)
        entry = entries.get(valid.voice) or self.resolver.resolve(valid.voice)
        entries[valid.voice] = entry
        mode = valid.mode or check_mode_supported(auto_mode(valid.instruct_text, bool(entry.transcript)),
                                                  self.engine.capabilities().modes, self.engine.name)
        check_mode_needs(mode, valid.prompt_text, valid.instruct_text, saved_voice=True)
        valid = dataclasses.replace(valid, mode=mode, voice=entry.id)
        source = self.resolver.saved_source(entry, mode, lambda text: self._transcript(valid, text))
        log.info(f"voice {entry.name!r} (id {entry.id}): saved {entry.duration:.2f} s recording"
                 f"{', transcript ' + repr(_clip(entry.transcript, 30)) if source.prompt_text else ''}")
        return valid, source

    def _transcript(self, request: ValidRequest, transcript: str) -> str:
        """The prompt transcript is read by the model alongside the text, so it gets the same normalization."""
        try:
            return self.frontend.process(transcript, normalize=request.normalize).marked
        except UserInputError as err:
            raise UserInputError(f"In the prompt transcript: {err}") from err

    # ---- a dialogue: every turn through the same stages, saved once -------------------------------
    def synthesize_dialogue(self, request: DialogueRequest, request_id: str | None = None) -> DialogueResult:
        return _result_of(self.run_dialogue(request, request_id))

    def run_dialogue(self, request: DialogueRequest, request_id: str | None = None) -> Iterator[Event]:
        """validate the script → each turn's text and voice → accepted → one admission for the whole
        dialogue → each turn's features and synthesis → the joined audio saved once → report."""
        ctx = _Request(self.requests, request_id, "dialogue", self.engine.name)
        with ctx.handled():
            with ctx.stage("validate"):
                dialogue = validate_dialogue(request, self.config)
            entries: dict = {}
            plans = [self._prepare(SynthesisRequest(
                text=turn.text, mode=AUTO, voice=dialogue.mapping.get(turn.speaker, turn.speaker),
                instruct_text=turn.instruction, seed=(dialogue.seed + index) % (MAX_SEED + 1), speed=dialogue.speed),
                ctx, entries) for index, turn in enumerate(dialogue.turns)]
            self.outputs.check_space()
            names = {turn.speaker: entries[dialogue.mapping.get(turn.speaker, turn.speaker)] for turn in dialogue.turns}
            ctx.log.info(f"dialogue: {len(plans)} turn(s), {len(names)} voice(s) "
                         f"({', '.join(f'{s}={e.name}' for s, e in names.items())}), gap {dialogue.gap_s:g} s, "
                         f"seed {dialogue.seed}")
            yield Event(accepted=Accepted(ctx.id, dialogue.seed, "dialogue", None))
            with self.admission.held(ctx.log, ctx.id) as ticket:
                yield from self._queue(ctx, ticket)
                samples, turns, notices, elapsed = yield from self._render_turns(plans, dialogue, names, ctx)
                with ctx.stage("save"):
                    path = self.outputs.save(ctx.id, samples, self.engine.sample_rate,
                                             _dialogue_record(ctx.id, request.script, dialogue, names, turns,
                                                              len(samples) / self.engine.sample_rate,
                                                              self.engine.name), ctx.log)
            done = self._report(ctx, "dialogue", path, samples, elapsed, dialogue.seed, notices, "dialogue ")
            yield Event(chunk=samples)
            yield Event(result=DialogueResult(ctx.id, path, done.sample_rate, done.audio_seconds, dialogue.seed,
                                              done.rtf, turns, notices))

    def _render_turns(self, plans: list[_Plan], dialogue, names: dict, ctx: _Request):
        rate = self.engine.sample_rate
        silence = np.zeros(int(round(dialogue.gap_s * rate)), np.float32)
        parts: list[np.ndarray] = []
        turns: list[TurnResult] = []
        notices: list[str] = []
        position, elapsed = 0, 0.0
        for index, (plan, turn) in enumerate(zip(plans, dialogue.turns), start=1):
            audio, seconds = yield from self._render(plan, ctx)
            elapsed += seconds
            notices += [notice for notice in plan.notices if notice not in notices]
            if parts:
                parts.append(silence)
                position += len(silence)
            parts.append(audio)
            entry = names[turn.speaker]
            turns.append(TurnResult(turn.speaker, entry.name, position / rate, (position + len(audio)) / rate,
                                    f"{ctx.id}-{index}", entry.id))
            position += len(audio)
            yield Event(progress=(index / len(plans), f"turn {index}/{len(plans)} done"))
        return np.concatenate(parts), turns, notices, elapsed

    # ---- saved voices (cosyvoice.voices.library) -----------------------------------------------------------
    def save_voice(self, name: Any, audio_path: Any, transcript: Any = "", language: Any = "", notes: Any = "",
                   request_id: str | None = None):
        """Save a prompt recording to the library with its features; admitted and logged like a request."""
        request_id = request_id or uuid.uuid4().hex[:6]
        log = request_logger(request_id)
        if not audio_path or not isinstance(audio_path, str):
            raise UserInputError("Saving a voice needs its recording: upload or record 3–15 s of the voice.")
        log.info(f"save voice {str(name)[:64]!r}: extracting features with {self.engine.name}")
        try:
            with self.admission.held(log, request_id) as ticket:
                for _ in ticket.wait():
                    pass
                entry = self.library.add(name, audio_path, transcript, language, notes, engine=self.engine)
        except UserInputError as err:
            log.warning(f"voice not saved: {err}")
            err.logged = True
            raise
        except StudioError as err:
            log.error(f"voice not saved: {err}")
            err.logged = True
            raise
        log.success(f"saved voice {entry.name!r} (id {entry.id}) with {self.engine.name} features")
        return entry

    def _synthesize(self, items: list[str | Pause], voice: Voice, style: Style, seed: int, stream: bool,
                    log, request_id: str, parent_span, spans: list[PieceSpan] | None = None) -> Iterator[Event]:
        """Pieces in order, each from the engine, with a written pause as exact silence; nothing added between.
        `spans` receives each piece's sample offsets in the result (pauses counted), for subtitles."""
        total = sum(1 for item in items if not isinstance(item, Pause))
        shown: set[str] = set()
        index = position = 0
        for item in items:
            if isinstance(item, Pause):
                silence = np.zeros(round(item.seconds * self.engine.sample_rate), np.float32)
                position += len(silence)
                yield Event(chunk=silence)
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
                    self.requests.update(request_id, progress=f"piece {index}/{total}: {progress.message}")
                    pending.append(Event(progress=((index - 1) / total, f"piece {index}/{total}: {progress.message}")))

            log.info(f"piece {index}/{total}: synthesising {len(item)} chars")
            self.requests.update(request_id, progress=f"piece {index}/{total}")
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
            if spans is not None:
                spans.append(PieceSpan(position, position + produced, item))
            position += produced
            log.info(f"piece {index}/{total} vocoded ({produced / self.engine.sample_rate:.2f} s audio)")


def _result_of(events: Iterator[Event]):
    """The result, after running the events to their end (the request's "done" is recorded after it)."""
    result = None
    for event in events:
        result = event.result or result
    if result is None:
        raise EngineError("the request ended without a result", stage="report")
    return result


def _engine_parallelism(engine: Engine) -> int:
    """The engine's own parallelism; an engine from before the method existed gets 1 (the safe width)."""
    parallelism = getattr(engine, "parallelism", None)
    return max(1, int(parallelism())) if parallelism else 1


def _dialogue_record(request_id: str, script: str, dialogue, names: dict, turns: list[TurnResult], seconds: float,
                     engine_name: str) -> dict:
    """The dialogue's one sidecar: what the History tab lists, and the turn details GET /v1 serves."""
    from datetime import datetime

    return {"request_id": request_id, "created": datetime.now().isoformat(timespec="milliseconds"),
            "mode": "dialogue", "voice": ", ".join(sorted({e.name for e in names.values()})),
            "text": script[:TEXT_KEPT], "seed": dialogue.seed, "gap": dialogue.gap_s, "speed": dialogue.speed,
            "voices": {speaker: entry.name for speaker, entry in names.items()},
            "turns": [{"speaker": t.speaker, "voice": t.voice, "voice_id": t.voice_id, "start": round(t.start_s, 3),
                       "end": round(t.end_s, 3)} for t in turns],
            "duration": round(seconds, 3), "engine": engine_name}
