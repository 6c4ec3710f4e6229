"""The OpenAI-compatible REST API (/v1) on the app's own port, served by the same SynthesisService.

    POST   /v1/audio/speech          {model, input, voice, response_format, speed, instructions, stream_format}
    GET    /v1/audio/voices          the saved voices
    POST   /v1/audio/voices          multipart: name, audio, transcript (+ language, notes)
    DELETE /v1/audio/voices/{id}
    GET    /v1/models

`voice` names a saved voice (cosyvoice.voices). Without `instructions` a voice with a transcript is
spoken in zero-shot mode, one without in cross-lingual mode; `instructions` selects instruct mode.
Extras beyond OpenAI's fields (the official client sends them with extra_body): `seed`, `stream`
(synthesise sentence by sentence as the response is sent) and `normalize`.

Errors use OpenAI's shape, {"error": {"message", "type", "param", "code"}}, and every response
carries the request id in `x-request-id` (the id the log lines use), also named in error messages.
Bodies are read here with their own caps: HttpGuard only inspects Gradio's routes, and nothing in
a /v1 body is ever taken as a server path.
"""
from __future__ import annotations

import base64
import json
import secrets
import shutil
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from loguru import logger
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from .dialogue import synthesize_dialogue
from .encode import CONTENT_TYPES, FORMATS, StreamEncoder, encode
from .errors import ServerBusyError, StorageFullError, StudioError, UserInputError
from .http_guard import MAX_JSON_BYTES, CredentialGate, refusal_response, request_id_of
from .modes import mode_for_voice
from .service import MAX_SEED, SynthesisRequest, SynthesisService
from .voices import VoiceEntry, VoiceNameTaken, VoiceNotFound

MODEL_ALIASES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")     # accepted so existing clients work unchanged


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.logged = False          # the service already wrote this refusal to the log


def error_response(err: ApiError, request_id: str) -> JSONResponse:
    body = {"error": {"message": f"{err.message} (request {request_id})", "type": err.type, "param": err.param,
                      "code": err.code}}
    return JSONResponse(body, status_code=err.status, headers={"x-request-id": request_id})


def _from_studio_error(err: StudioError, param: str | None = None, logged: bool = False) -> ApiError:
    api_error = _api_error(err, param)
    api_error.logged = logged
    return api_error


def _api_error(err: StudioError, param: str | None) -> ApiError:
    if isinstance(err, ServerBusyError):
        return ApiError(429, str(err), "rate_limit_error", code="server_busy")
    if isinstance(err, VoiceNotFound):
        return ApiError(404, str(err), param="voice", code="voice_not_found")
    if isinstance(err, VoiceNameTaken):
        return ApiError(409, str(err), param="name", code="voice_name_taken")
    if isinstance(err, UserInputError):
        return ApiError(400, str(err), param=param)
    if isinstance(err, StorageFullError):
        return ApiError(507, str(err), "server_error", code="storage_full")
    return ApiError(500, str(err), "server_error", code="internal_error")


async def _read_body(request: Request, limit: int, what: str) -> bytes:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise ApiError(413, f"The {what} is {int(length) / 2**20:.1f} MB; the limit is {limit / 2**20:.0f} MB.",
                       code="request_too_large")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise ApiError(413, f"The {what} is over the {limit / 2**20:.0f} MB limit.", code="request_too_large")
    return bytes(body)


def _field(data: dict, name: str, default: Any = None, required: bool = False) -> Any:
    """A text field of the JSON body (other types are the service's to check)."""
    value = data.get(name, default)
    if value is None:
        if required:
            raise ApiError(400, f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter")
        return default
    if not isinstance(value, str):
        raise ApiError(400, f"Invalid type for '{name}': expected a string.", param=name, code="invalid_type")
    return value


def _voice_json(entry: VoiceEntry) -> dict:
    """OpenAI's audio.voice object, plus what a saved voice adds (duration, transcript, status)."""
    if entry.broken:
        return {"id": entry.id, "object": "audio.voice", "type": "audio_sample", "name": entry.name,
                "created_at": 0, "status": "broken", "problem": entry.problem}
    return {"id": entry.id, "object": "audio.voice", "type": "audio_sample", "name": entry.name,
            "created_at": int(datetime.fromisoformat(entry.created).timestamp()), "status": "ok",
            "created": entry.created, "duration": entry.duration, "language": entry.language, "notes": entry.notes,
            "transcript": entry.transcript, "sha256": entry.sha256}


def openai_router(service: SynthesisService, api_key: str | None = None,
                  basic_auth: tuple[str, str] | None = None, max_upload_bytes: int = 25 * 2**20,
                  gate: CredentialGate | None = None) -> APIRouter:
    """The /v1 routes. With `api_key`, every call needs `Authorization: Bearer <key>`; with only a login
    (`basic_auth`, the app's --auth), HTTP Basic with those credentials is accepted instead. The app passes
    its `gate` (shared with the login form, so one back-off covers every credential)."""
    router = APIRouter(prefix="/v1")
    gate = gate or CredentialGate(auth=basic_auth, api_key=api_key)

    async def guarded(request: Request, handler) -> Response:
        request_id = request_id_of(request.scope)
        log = logger.bind(req=request_id)
        refusal = gate.check_api(request.scope)      # the gate logs wrong credentials and the back-off
        if refusal is not None:
            return refusal_response(request.scope, refusal)
        try:
            response = await handler(request, request_id)
        except ApiError as err:
            if err.status >= 500:
                log.error(f"/v1 {request.url.path}: {err.message}")
            elif not err.logged:
                log.warning(f"/v1 {request.url.path}: refused: {err.message}")
            return error_response(err, request_id)
        response.headers["x-request-id"] = request_id
        return response

    # ---- speech ---------------------------------------------------------------------------------
    def speech_request(data: dict) -> tuple[SynthesisRequest, str, str, Any]:
        _field(data, "model", required=True)
        text = _field(data, "input", required=True)
        voice = data.get("voice")
        if isinstance(voice, dict):              # newer clients may send {"id": "..."}
            voice = voice.get("id")
        if not isinstance(voice, str) or not voice.strip():
            raise ApiError(400, "Missing required parameter: 'voice' (the name or id of a saved voice; "
                                "GET /v1/audio/voices lists them).", param="voice", code="missing_required_parameter")
        response_format = _field(data, "response_format", "mp3")
        if response_format not in FORMATS:
            raise ApiError(400, f"Invalid response_format {response_format[:20]!r}; use one of {', '.join(FORMATS)}.",
                           param="response_format", code="invalid_value")
        stream_format = _field(data, "stream_format", "audio")
        if stream_format not in ("audio", "sse"):
            raise ApiError(400, "Invalid stream_format; use 'audio' or 'sse'.", param="stream_format",
                           code="invalid_value")
        instructions = _field(data, "instructions", "") or ""
        seed = data.get("seed")
        if seed is None:
            seed = secrets.randbelow(MAX_SEED)   # chosen here so the x-seed header can name it up front
        try:
            entry = service.voices.resolve(voice)
        except StudioError as err:
            raise _from_studio_error(err, "voice") from err
        mode = mode_for_voice(instructions, bool(entry.transcript))
        synthesis = SynthesisRequest(text=text, mode=mode, instruct_text=instructions, seed=seed,
                                     speed=data.get("speed", 1.0), stream=data.get("stream", False),
                                     normalize=data.get("normalize", True), voice=entry.id)
        return synthesis, response_format, stream_format, seed

    async def speech(request: Request, request_id: str) -> Response:
        body = await _read_body(request, MAX_JSON_BYTES, "request body")
        try:
            data = json.loads(body or b"null")
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "The request body is not valid JSON.", code="invalid_json") from None
        if not isinstance(data, dict):
            raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
        synthesis, response_format, stream_format, seed = await run_in_threadpool(speech_request, data)
        events = service.run(synthesis, request_id)
        try:
            first = await run_in_threadpool(_next_event, events)   # validation and admission happen here
        except StudioError as err:
            raise _from_studio_error(err, None, logged=True) from err
        encoder = StreamEncoder(response_format, service.engine.sample_rate)
        headers = {"x-seed": str(seed)}
        if stream_format == "sse":
            return StreamingResponse(iterate_in_threadpool(_sse(first, events, encoder, request_id)),
                                     media_type="text/event-stream", headers=headers)
        # A WAV made in one piece gets its real sizes in the header (some readers insist on them);
        # a streamed one says "to the end of the stream".
        whole_wav = response_format == "wav" and data.get("stream") not in (True, "true", 1)
        if whole_wav:   # status line only once the file exists: a balancer may re-send a request cut before it
            wav = await run_in_threadpool(lambda: b"".join(_whole_wav(first, events, service.engine.sample_rate)))
            return Response(wav, media_type=CONTENT_TYPES[response_format], headers=headers)
        return StreamingResponse(iterate_in_threadpool(_audio(first, events, encoder, request_id)),
                                 media_type=CONTENT_TYPES[response_format], headers=headers)

    # ---- dialogue (not an OpenAI route: several saved voices, one file) ----------------------------
    async def dialogue(request: Request, request_id: str) -> Response:
        body = await _read_body(request, MAX_JSON_BYTES, "request body")
        try:
            data = json.loads(body or b"null")
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "The request body is not valid JSON.", code="invalid_json") from None
        if not isinstance(data, dict):
            raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
        script = _field(data, "script", required=True)
        response_format = _field(data, "response_format", "wav")
        if response_format not in FORMATS:
            raise ApiError(400, f"Invalid response_format {response_format[:20]!r}; use one of {', '.join(FORMATS)}.",
                           param="response_format", code="invalid_value")
        try:
            result = await run_in_threadpool(synthesize_dialogue, service, script, data.get("voices"),
                                             data.get("gap", 0.4), data.get("seed"), data.get("speed", 1.0),
                                             request_id)
            samples = await run_in_threadpool(_read_wav, result.path)
        except StudioError as err:
            raise _from_studio_error(err, None, logged=True) from err
        turns = [{"speaker": t.speaker, "voice": t.voice, "start": round(t.start_s, 3), "end": round(t.end_s, 3)}
                 for t in result.turns]
        return Response(encode(samples, result.sample_rate, response_format), media_type=CONTENT_TYPES[response_format],
                        headers={"x-seed": str(result.seed), "x-dialogue-turns": json.dumps(turns)})

    # ---- voices ---------------------------------------------------------------------------------
    async def list_voices(request: Request, request_id: str) -> Response:
        entries = await run_in_threadpool(service.voices.entries)
        return JSONResponse({"object": "list", "data": [_voice_json(e) for e in entries]})

    async def create_voice(request: Request, request_id: str) -> Response:
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise ApiError(400, "Send the voice as multipart/form-data with fields name, audio (a file) and "
                                "transcript.", code="invalid_content_type")
        request._body = await _read_body(request, max_upload_bytes, "upload")   # form() parses the capped body
        try:
            form = await request.form(max_files=2, max_fields=10)
        except Exception as err:
            raise ApiError(400, f"The form could not be read ({type(err).__name__}).", code="invalid_form") from None
        upload = form.get("audio") or form.get("audio_sample")     # audio_sample: the official client's name
        if upload is None or isinstance(upload, str):
            raise ApiError(400, "Missing required parameter: 'audio' (the prompt recording, as a file).",
                           param="audio", code="missing_required_parameter")
        fields = {key: form.get(key) for key in ("name", "transcript", "language", "notes")}
        if any(value is not None and not isinstance(value, str) for value in fields.values()):
            raise ApiError(400, "name, transcript, language and notes must be text fields.", code="invalid_type")
        folder = Path(tempfile.mkdtemp(prefix="cosyvoice-upload-"))
        try:
            suffix = Path(upload.filename or "").suffix[:8] if upload.filename else ""
            path = folder / f"upload{suffix if suffix.isascii() else ''}"
            with open(path, "wb") as sink:
                await run_in_threadpool(shutil.copyfileobj, upload.file, sink)
            try:
                entry = await run_in_threadpool(service.save_voice, fields["name"] or "", str(path),
                                                fields["transcript"] or "", fields["language"] or "",
                                                fields["notes"] or "", request_id)
            except StudioError as err:
                raise _from_studio_error(err, "name" if "voice name" in str(err) else "audio", logged=True) from err
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return JSONResponse(_voice_json(entry), status_code=201)

    async def delete_voice(request: Request, request_id: str) -> Response:
        voice_id = request.path_params["voice_id"]
        try:
            entry = await run_in_threadpool(service.voices.delete, voice_id)
        except StudioError as err:
            raise _from_studio_error(err, "voice_id") from err
        return JSONResponse({"id": entry.id, "object": "audio.voice.deleted", "name": entry.name, "deleted": True})

    async def models(request: Request, request_id: str) -> Response:
        created = int(service.started)
        ids = [service.engine.name, *MODEL_ALIASES]
        return JSONResponse({"object": "list", "data": [
            {"id": model_id, "object": "model", "created": created, "owned_by": "cosyvoice-studio"}
            for model_id in ids]})

    @router.post("/audio/speech", include_in_schema=True)
    async def speech_route(request: Request):
        return await guarded(request, speech)

    @router.get("/audio/voices")
    async def list_voices_route(request: Request):
        return await guarded(request, list_voices)

    @router.post("/audio/voices")
    async def create_voice_route(request: Request):
        return await guarded(request, create_voice)

    @router.delete("/audio/voices/{voice_id}")
    async def delete_voice_route(request: Request, voice_id: str):
        return await guarded(request, delete_voice)

    @router.post("/audio/dialogue")
    async def dialogue_route(request: Request):
        return await guarded(request, dialogue)

    @router.get("/models")
    async def models_route(request: Request):
        return await guarded(request, models)

    return router


_DONE = object()


def _read_wav(path: Path):
    import soundfile as sf

    return sf.read(path, dtype="float32")[0]


def _next_event(events):
    return next(events, _DONE)


def _chunks(first, events) -> Iterator[Any]:
    """The service's events from the one already taken; a failure mid-stream ends the stream (the
    status line has gone out; the service logged the failure with this request id)."""
    event = first
    while event is not _DONE:
        yield event
        try:
            event = next(events, _DONE)
        except StudioError:
            return


def _audio(first, events, encoder: StreamEncoder, request_id: str) -> Iterator[bytes]:
    for event in _chunks(first, events):
        if event.chunk is not None:
            data = encoder.feed(event.chunk)
            if data:
                yield data
    tail = encoder.finish()
    if tail:
        yield tail


def _whole_wav(first, events, sample_rate: int) -> Iterator[bytes]:
    import numpy as np

    chunks = [event.chunk for event in _chunks(first, events) if event.chunk is not None]
    if chunks:
        yield encode(np.concatenate(chunks), sample_rate, "wav")


def _sse(first, events, encoder: StreamEncoder, request_id: str) -> Iterator[bytes]:
    def message(payload: dict) -> bytes:
        return f"data: {json.dumps(payload)}\n\n".encode()

    result = None
    for event in _chunks(first, events):
        if event.chunk is not None:
            data = encoder.feed(event.chunk)
            if data:
                yield message({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
        if event.result is not None:
            result = event.result
    tail = encoder.finish()
    if tail:
        yield message({"type": "speech.audio.delta", "audio": base64.b64encode(tail).decode()})
    done = {"type": "speech.audio.done", "request_id": request_id}
    if result is not None:
        done.update(audio_seconds=round(result.audio_seconds, 3), seed=result.seed, file=result.path.name)
    yield message(done)
