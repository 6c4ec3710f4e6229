"""Sending a result over HTTP without ever claiming a success that did not happen.

The status line goes out only once the service has produced audio (`first_audio`), so every
refusal before that is a real error response. What can still fail afterwards (a streamed
request's save, the engine mid-way) ends the stream in a way the client sees:

- `stream_format: "sse"`: an `error` event (OpenAI's error object) instead of `speech.audio.done`;
- a plain audio body (chunked): the connection is closed without the final empty chunk, so every
  HTTP client reports an incomplete body; the error is in the log under the request id.
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from loguru import logger
from starlette.concurrency import iterate_in_threadpool
from starlette.responses import Response, StreamingResponse

from cosyvoice.audio.encode import CONTENT_TYPES, StreamEncoder, encode
from cosyvoice.errors import OutputsError, StudioError
from cosyvoice.service.subtitles import render


@dataclass
class Start:
    """The events up to the first audio: what "accepted" said, and the first chunk or result."""
    seed: int
    stream: bool
    first: object


def first_audio(events) -> Start:
    """Pull events until audio (or the result) exists; a refusal or failure before that raises here."""
    accepted = None
    for event in events:
        if event.accepted is not None:
            accepted = event.accepted
        if event.chunk is not None or event.result is not None:
            assert accepted is not None, "the service sends its accepted event before any audio"
            return Start(accepted.seed, accepted.stream, event)
    raise StudioError("The request ended without audio.")


def whole_result(events, start: Start | None = None):
    """Run to the end: (result, samples of the whole result)."""
    samples, result = [], None
    for event in (_events_after(start, events) if start else events):
        if event.chunk is not None:
            samples.append(event.chunk)
        if event.result is not None:
            result = event.result
    if result is None:
        raise StudioError("The request ended without a result.")
    return result, np.concatenate(samples)


def _events_after(start: Start, events):
    yield start.first
    yield from events


class CuttableStream(StreamingResponse):
    """A chunked body from a (sync) byte iterator; a StudioError raised by it closes the connection
    without the terminating chunk (the client sees a cut body), after logging it."""

    def __init__(self, chunks: Iterator[bytes], media_type: str, headers: dict, request_id: str):
        super().__init__(content=chunks, media_type=media_type, headers=headers)
        self.chunks, self.request_id = chunks, request_id

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            async for data in iterate_in_threadpool(self.chunks):
                await send({"type": "http.response.body", "body": data, "more_body": True})
        except StudioError as err:
            logger.bind(req=self.request_id).error(
                f"response cut after its audio started (the client sees an incomplete body): {err}")
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def audio_response(start: Start, events, response_format: str, sample_rate: int, request_id: str,
                   subtitles: str | None = None) -> Response:
    """A whole result (not streamed) is complete before its status line; a streamed one is cut on failure.
    With `subtitles`, a whole result's headers name its id for GET /v1/audio/subtitles/{id}.srt|.vtt."""
    if not start.stream:
        result, samples = whole_result(events, start)
        headers = {"x-seed": str(start.seed)}
        if subtitles:
            headers["x-subtitles-id"] = _subtitles_id(result, request_id)
        return Response(encode(samples, sample_rate, response_format), media_type=CONTENT_TYPES[response_format],
                        headers=headers)
    encoder = StreamEncoder(response_format, sample_rate)

    def body() -> Iterator[bytes]:
        for event in _events_after(start, events):
            if event.chunk is not None:
                data = encoder.feed(event.chunk)
                if data:
                    yield data
        tail = encoder.finish()
        if tail:
            yield tail
    return CuttableStream(body(), CONTENT_TYPES[response_format], {"x-seed": str(start.seed)}, request_id)


def _subtitles_id(result, request_id: str) -> str:
    """The saved result's id, once its sidecar (which the subtitles are read from) is known to be on disk."""
    from cosyvoice.service.history import sidecar_path

    if not sidecar_path(result.saved).is_file():
        raise OutputsError(f"The audio was saved as {result.saved.name}, but its subtitles could not be written "
                           f"(request {request_id}); see the WARNING in the log. Free space in outputs/ and retry.")
    return result.saved.stem


def sse_response(start: Start, events, response_format: str, sample_rate: int, request_id: str,
                 subtitles: str | None = None) -> Response:
    """Server-sent events: audio deltas, then `speech.audio.done` naming the saved file (then, when asked,
    `speech.subtitles` with the SRT/WebVTT text), or an `error` event."""
    encoder = StreamEncoder(response_format, sample_rate)

    def body() -> Iterator[bytes]:
        result = None
        try:
            for event in _events_after(start, events):
                if event.chunk is not None:
                    yield from _delta(encoder.feed(event.chunk))
                result = event.result or result
        except StudioError as err:
            from cosyvoice.server.openai_api import error_body

            logger.bind(req=request_id).error(f"stream ended with an error event after its audio started: {err}")
            yield _message({"type": "error", **error_body(err, request_id)[1]})
            return
        yield from _delta(encoder.finish())
        assert result is not None, "the service ends every stream with a result or an error"
        yield _message({"type": "speech.audio.done", "request_id": request_id, "seed": result.seed,
                        "audio_seconds": round(result.audio_seconds, 3), "file": result.saved.name})
        if subtitles:
            yield _message({"type": "speech.subtitles", "format": subtitles, "id": result.saved.stem,
                            "subtitles": render(result.pieces, subtitles)})
    return CuttableStream(body(), "text/event-stream", {"x-seed": str(start.seed)}, request_id)


def _delta(data: bytes) -> Iterator[bytes]:
    if data:
        yield _message({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})


def _message(payload: dict) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()
