"""The OpenAI-compatible REST API (/v1): translates HTTP to service calls and results back, nothing more.

    POST   /v1/audio/speech          {model, input, voice, response_format, speed, instructions, stream_format}
    POST   /v1/audio/dialogue        {script, voices, gap, seed, speed, response_format}  (not OpenAI's)
    GET    /v1/audio/dialogue/{id}   the turns of a saved dialogue (id from the `x-dialogue-id` header)
    GET    /v1/audio/subtitles/{id}.srt|.vtt   a saved result's subtitles (id from the `x-subtitles-id` header)
    GET    /v1/audio/voices          the saved voices
    POST   /v1/audio/voices          multipart: name, audio, transcript (+ language, notes)
    DELETE /v1/audio/voices/{id}
    GET    /v1/models

Bodies are typed by pydantic models (one per route) after a capped, UTF-8-only JSON read; the
service decides mode ("auto"), seed, voice and saving. A response's status line goes out only
when the first audio exists, so every refusal is a real 4xx/5xx; what fails after that ends the
stream visibly (see `cosyvoice.server.streaming`). Errors use OpenAI's shape, {"error": {"message",
"type", "param", "code"}}, from one exception handler; every message names the request id.
"""
from __future__ import annotations

import json
import re
import shutil
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from loguru import logger
from pydantic import BaseModel, ConfigDict, StrictStr, ValidationError
from starlette.concurrency import run_in_threadpool

from cosyvoice.jobs.store import JobNotFound, JobStateError
from cosyvoice.service.dialogue import DialogueRequest
from cosyvoice.audio.encode import CONTENT_TYPES, encode
from cosyvoice.errors import ServerBusyError, StorageFullError, StudioError, UserInputError
from cosyvoice.server.http_guard import MAX_JSON_BYTES, CredentialGate, Refusal, refusal_response, request_id_of
from cosyvoice.service.synthesis import AUTO, SynthesisRequest, SynthesisService
from cosyvoice.server.streaming import audio_response, first_audio, sse_response, whole_result
from cosyvoice.service.subtitles import MEDIA_TYPES, render
from cosyvoice.service.validation import about
from cosyvoice.voices.library import VoiceEntry, VoiceNameTaken, VoiceNotFound, validate_name

MODEL_ALIASES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")     # accepted so existing clients work unchanged
# the service's field names → the names a /v1 client sent
API_PARAMS = {"text": "input", "instruct_text": "instructions", "prompt_text": "transcript", "mode": "instructions"}
OUTPUT_NAME = re.compile(r"^output_[0-9]{8}_[0-9]{6}_[0-9a-f]{8}_[A-Za-z0-9_.:-]{1,64}$")


class ApiError(StudioError):
    """A refusal made at the HTTP edge itself (body, content type, model, auth), with its HTTP status."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None,
                 type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.code, self.param, self.type = status, code, param, type_


# ---- request models: the fields a client sends; values the service checks stay `Any` ------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class VoiceRef(_Body):
    id: StrictStr


class SpeechBody(_Body):
    model: StrictStr
    input: StrictStr
    voice: StrictStr | VoiceRef
    response_format: Literal["wav", "mp3", "flac", "opus", "aac", "pcm"] = "mp3"
    stream_format: Literal["audio", "sse"] = "audio"
    instructions: StrictStr = ""
    speed: Any = 1.0
    seed: Any = None
    stream: Any = False
    normalize: Any = True
    subtitles: Literal["srt", "vtt"] | None = None

    def synthesis(self) -> SynthesisRequest:
        voice = self.voice.id if isinstance(self.voice, VoiceRef) else self.voice
        return SynthesisRequest(text=self.input, mode=AUTO, voice=voice, instruct_text=self.instructions,
                                seed=self.seed, speed=self.speed, stream=self.stream, normalize=self.normalize)


class DialogueBody(_Body):
    script: StrictStr
    voices: Any = None
    gap: Any = 0.4
    seed: Any = None
    speed: Any = 1.0
    response_format: Literal["wav", "mp3", "flac", "opus", "aac", "pcm"] = "wav"

    def dialogue(self) -> DialogueRequest:
        return DialogueRequest(script=self.script, voices=self.voices, gap=self.gap, seed=self.seed, speed=self.speed)


# ---- dependencies ---------------------------------------------------------------------------------
def request_id(request: Request) -> str:
    """The id HttpGuard gave the request (a sane X-Request-ID, logged and echoed; never a file name)."""
    return request_id_of(request.scope)


async def read_json(request: Request) -> dict:
    """The body as a JSON object: capped, UTF-8 only, no NaN/Infinity, nesting bounded."""
    body = await _read_capped(request, MAX_JSON_BYTES, "request body")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "The request body must be JSON encoded as UTF-8.", "invalid_json") from None
    try:
        data = json.loads(text or "null", parse_constant=_no_constant)
    except RecursionError:
        raise ApiError(400, "The request body nests too deeply to be a request.", "invalid_json") from None
    except ValueError as err:
        raise ApiError(400, f"The request body is not valid JSON ({str(err)[:80]}).", "invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "The request body must be a JSON object.", "invalid_json")
    return data


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON value")


def typed(model: type[BaseModel], data: dict) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        param = ".".join(str(part) for part in first["loc"][:1]) or None
        if first["type"] == "missing":
            raise ApiError(400, f"Missing required parameter: '{param}'.", "missing_required_parameter", param)
        raise ApiError(400, f"Invalid value for '{param}': {first['msg']}.", "invalid_value", param) from None


async def _read_capped(request: Request, limit: int, what: str) -> bytes:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise ApiError(413, f"The {what} is {int(length) / 2**20:.1f} MB; the limit is {limit / 2**20:.0f} MB.",
                       "request_too_large")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise ApiError(413, f"The {what} is over the {limit / 2**20:.0f} MB limit.", "request_too_large")
    return bytes(body)


# ---- the one error handler ------------------------------------------------------------------------
# What each kind of StudioError is on the wire: the first row it is an instance of (subclasses before
# their bases) gives its HTTP status, OpenAI error type and code; any other is a 500. ApiError carries its own.
ERRORS = ((ServerBusyError, 429, "rate_limit_error", "server_busy"),
          (VoiceNotFound, 404, "invalid_request_error", "voice_not_found"),
          (VoiceNameTaken, 409, "invalid_request_error", "voice_name_taken"),
          (JobNotFound, 404, "invalid_request_error", "job_not_found"),
          (JobStateError, 409, "invalid_request_error", "invalid_job_state"),
          (StorageFullError, 507, "server_error", "insufficient_storage"),
          (UserInputError, 400, "invalid_request_error", "invalid_value"))
INTERNAL = (500, "server_error", "internal_error")


def error_body(err: StudioError, request_id: str) -> tuple[int, dict]:
    if isinstance(err, ApiError):
        status, kind, code = err.status, err.type, err.code
    else:
        status, kind, code = next(((s, t, c) for cls, s, t, c in ERRORS if isinstance(err, cls)), INTERNAL)
    param = err.param
    if param is None:
        param = "voice" if isinstance(err, VoiceNotFound) else "name" if isinstance(err, VoiceNameTaken) else None
    return status, {"error": {"message": f"{err} (request {request_id})", "type": kind,
                              "param": None if param is None else API_PARAMS.get(param, param), "code": code}}


async def studio_error_handler(request: Request, err: StudioError) -> Response:
    if isinstance(err, CredentialRefused):
        return refusal_response(request.scope, err.refusal)
    rid = request_id(request)
    status, body = error_body(err, rid)
    if not err.logged:
        log = logger.bind(req=rid)
        (log.error if status >= 500 else log.warning)(f"{request.method} {request.url.path}: refused: {err}")
    headers = {"x-request-id": rid, **({"retry-after": "30"} if status == 429 else {})}
    return JSONResponse(body, status_code=status, headers=headers)


def use_error_shape(app: FastAPI) -> None:
    """Let `studio_error_handler` answer every StudioError the app's routes raise. Each mount of /v1
    routes calls it; a second call sets the same handler again."""
    # Starlette types every handler as taking any Exception; this one is registered for StudioError only.
    app.add_exception_handler(StudioError, studio_error_handler)  # type: ignore[arg-type]


def _voice_json(entry: VoiceEntry) -> dict:
    """OpenAI's audio.voice object, plus what a saved voice adds (duration, transcript, status)."""
    if entry.broken:
        return {"id": entry.id, "object": "audio.voice", "type": "audio_sample", "name": entry.name,
                "created_at": 0, "status": "broken", "problem": entry.problem}
    return {"id": entry.id, "object": "audio.voice", "type": "audio_sample", "name": entry.name,
            "created_at": int(datetime.fromisoformat(entry.created).timestamp()), "status": "ok",
            "created": entry.created, "duration": entry.duration, "language": entry.language, "notes": entry.notes,
            "transcript": entry.transcript, "sha256": entry.sha256}


# ---- auth (a dependency on every route) -----------------------------------------------------------
class CredentialRefused(StudioError):
    """The app's credential gate said no (wrong key, no Basic login, or too many wrong tries)."""

    def __init__(self, refusal: Refusal):
        super().__init__(refusal.message)
        self.refusal = refusal


def authorizer(gate: CredentialGate):
    """Every /v1 route asks the app's one credential gate, so wrong API keys share the login form's back-off."""
    def authorized(request: Request) -> None:
        refusal = gate.check_api(request.scope)        # the gate writes the WARNING line and counts the failure
        if refusal is not None:
            raise CredentialRefused(refusal)
    return authorized


# ---- routes: thin translations ---------------------------------------------------------------------
def mount(app: FastAPI, service: SynthesisService, gate: CredentialGate | None = None,
          max_upload_bytes: int = 25 * 2**20) -> None:
    """Add the /v1 routes and the one handler that turns every StudioError into OpenAI's error shape."""
    use_error_shape(app)
    app.include_router(openai_router(service, gate or CredentialGate(), max_upload_bytes))


def openai_router(service: SynthesisService, gate: CredentialGate,
                  max_upload_bytes: int = 25 * 2**20) -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(authorizer(gate))])
    models = [service.engine.name, *MODEL_ALIASES]

    @router.post("/audio/speech")
    async def speech(data: dict = Depends(read_json), rid: str = Depends(request_id)) -> Response:
        body = typed(SpeechBody, data)
        _check_model(body.model, models)
        _check_subtitles(body)
        events = service.run(body.synthesis(), rid)
        start = await run_in_threadpool(first_audio, events)     # every refusal raises here: no status sent yet
        respond = sse_response if body.stream_format == "sse" else audio_response
        return await run_in_threadpool(respond, start, events, body.response_format, service.engine.sample_rate, rid,
                                       body.subtitles)

    @router.get("/audio/subtitles/{name}")
    async def subtitles(name: str) -> Response:
        return await run_in_threadpool(_subtitles_response, service, name)

    @router.post("/audio/dialogue")
    async def dialogue(data: dict = Depends(read_json), rid: str = Depends(request_id)) -> Response:
        body = typed(DialogueBody, data)
        result, samples = await run_in_threadpool(whole_result, service.run_dialogue(body.dialogue(), rid))
        audio = await run_in_threadpool(encode, samples, result.sample_rate, body.response_format)
        return Response(audio, media_type=CONTENT_TYPES[body.response_format],
                        headers={"x-seed": str(result.seed), "x-dialogue-id": result.path.stem})

    @router.get("/audio/dialogue/{dialogue_id}")
    async def dialogue_turns(dialogue_id: str) -> JSONResponse:
        record = await run_in_threadpool(_dialogue_record, service, dialogue_id)
        return JSONResponse({"id": dialogue_id, "object": "audio.dialogue", "request_id": record.get("request_id"),
                             "file": record.get("file"), "seed": record.get("seed"), "gap": record.get("gap"),
                             "duration": record.get("duration"), "turns": record.get("turns", [])})

    @router.get("/audio/voices")
    async def list_voices() -> JSONResponse:
        entries = await run_in_threadpool(service.library.entries)
        return JSONResponse({"object": "list", "data": [_voice_json(e) for e in entries]})

    @router.post("/audio/voices")
    async def create_voice(request: Request, rid: str = Depends(request_id)) -> JSONResponse:
        form = await _voice_form(request, max_upload_bytes)
        entry = await run_in_threadpool(_save_uploaded_voice, service, form, rid)
        return JSONResponse(_voice_json(entry), status_code=201)

    @router.delete("/audio/voices/{voice_id}")
    async def delete_voice(voice_id: str) -> JSONResponse:
        entry = await run_in_threadpool(service.library.delete, voice_id)
        return JSONResponse({"id": entry.id, "object": "audio.voice.deleted", "name": entry.name, "deleted": True})

    @router.get("/models")
    async def list_models() -> JSONResponse:
        return JSONResponse({"object": "list", "data": [
            {"id": model_id, "object": "model", "created": int(service.started), "owned_by": "cosyvoice-studio"}
            for model_id in models]})

    return router


def _check_model(model: str, known: list[str]) -> None:
    if model not in known:
        raise ApiError(400, f"Unknown model {model[:40]!r}; use one of {', '.join(known)} (GET /v1/models).",
                       "model_not_found", "model")


def _check_subtitles(body: SpeechBody) -> None:
    """Plain streamed audio sends its headers before the result exists, so its subtitles have no id yet."""
    if body.subtitles and body.stream is True and body.stream_format == "audio":
        raise ApiError(400, "Subtitles with stream: true need stream_format: \"sse\" (they arrive as the last "
                            "event); or leave stream off to get an x-subtitles-id header.", "invalid_value", "subtitles")


def _subtitles_response(service: SynthesisService, name: str) -> Response:
    """`<result id>.srt|.vtt`: rendered from the piece spans in the result's sidecar."""
    stem, _, fmt = name.rpartition(".")
    record = service.outputs.record(stem) if OUTPUT_NAME.match(stem) else None
    if fmt not in MEDIA_TYPES or not record or not isinstance(record.get("pieces"), list):
        raise ApiError(404, f"There are no subtitles {(stem + '.' + fmt)[:80]!r}: ask for <x-subtitles-id>.srt or "
                            ".vtt (the id is the x-subtitles-id header of a /v1/audio/speech response sent with "
                            "\"subtitles\"; results are kept for --outputs-retention-days).",
                       "subtitles_not_found", "id")
    return Response(render(record["pieces"], fmt), media_type=MEDIA_TYPES[fmt])


def _dialogue_record(service: SynthesisService, dialogue_id: str) -> dict:
    record = service.outputs.record(dialogue_id) if OUTPUT_NAME.match(dialogue_id) else None
    if not record or record.get("mode") != "dialogue":
        raise ApiError(404, f"There is no saved dialogue {dialogue_id[:80]!r} (the id is the x-dialogue-id header "
                            "of its response; results are kept for --outputs-retention-days).",
                       "dialogue_not_found", "dialogue_id")
    return record


async def _voice_form(request: Request, max_upload_bytes: int) -> dict:
    """The multipart fields of a new voice: the audio file and text fields (types checked here)."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(400, "Send the voice as multipart/form-data with fields name, audio (a file) and "
                            "transcript.", "invalid_content_type")
    request._body = await _read_capped(request, max_upload_bytes, "upload")   # form() parses the capped body
    try:
        form = await request.form(max_files=2, max_fields=10)
    except Exception as err:
        raise ApiError(400, f"The form could not be read ({type(err).__name__}).", "invalid_form") from None
    upload = form.get("audio") or form.get("audio_sample")     # audio_sample: the official client's name
    if upload is None or isinstance(upload, str):
        raise ApiError(400, "Missing required parameter: 'audio' (the prompt recording, as a file).",
                       "missing_required_parameter", "audio")
    fields = {key: form.get(key) for key in ("name", "transcript", "language", "notes")}
    if any(value is not None and not isinstance(value, str) for value in fields.values()):
        raise ApiError(400, "name, transcript, language and notes must be text fields.", "invalid_type")
    suffix = Path(upload.filename or "").suffix[:8]
    return {"upload": upload, "suffix": suffix if suffix.isascii() else "",
            **{key: value or "" for key, value in fields.items()}}


def _save_uploaded_voice(service: SynthesisService, form: dict, rid: str) -> VoiceEntry:
    folder = Path(tempfile.mkdtemp(prefix="cosyvoice-upload-"))
    try:
        path = folder / f"upload{form['suffix']}"
        with open(path, "wb") as sink:
            shutil.copyfileobj(form["upload"].file, sink)
        with about("name"):
            validate_name(form["name"])
        with about("audio"):
            return service.save_voice(form["name"], str(path), form["transcript"], form["language"], form["notes"], rid)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
