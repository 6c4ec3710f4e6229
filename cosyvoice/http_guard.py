"""What every HTTP request passes before Gradio or our routes see it (an ASGI middleware).

- File inputs: a Gradio API call may name a server path as its file payload. Only files that were
  uploaded to this app (Gradio's upload folder) are accepted; any other path — a secret, a device,
  a FIFO, a link out of the folder, another user's result — is refused with one message that
  does not say whether it exists, before anything opens it.
- Sizes: uploads over the limit are refused from their Content-Length (and cut off while they
  stream when there is none); other request bodies are small JSON and are capped too.
- Login: wrong passwords from one client are answered more and more slowly (429 with Retry-After).
- Private routes: with a login configured, /docs, /openapi.json and (unless --public-metrics)
  /metrics and /version need the login cookie or HTTP Basic credentials; /health and /ready stay open.
"""
from __future__ import annotations

import base64
import json
import os
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from loguru import logger

PATH_REFUSED = ("Prompt audio must be a file uploaded with this request (the UI's upload box, gradio_client's "
                "handle_file, or POST /gradio_api/upload). Server paths and links are not accepted.")
MAX_JSON_BYTES = 1 * 2**20


@dataclass
class LoginThrottle:
    """Per-client delay after failed logins: 1 s after the 3rd, doubling up to 5 minutes."""
    free_failures: int = 2
    base_delay_s: float = 1.0
    max_delay_s: float = 300.0
    _failures: dict[str, tuple[int, float]] = field(default_factory=dict)   # client -> (count, blocked until)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_s(self, client: str) -> float:
        with self._lock:
            _, until = self._failures.get(client, (0, 0.0))
        return max(0.0, until - time.monotonic())

    def failed(self, client: str) -> float:
        with self._lock:
            count, _ = self._failures.get(client, (0, 0.0))
            count += 1
            delay = 0.0 if count <= self.free_failures else min(
                self.max_delay_s, self.base_delay_s * 2 ** (count - self.free_failures - 1))
            self._failures[client] = (count, time.monotonic() + delay)
            if len(self._failures) > 10000:          # bounded memory under a spray of addresses
                self._failures.pop(next(iter(self._failures)))
            return delay

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)


@dataclass
class GuardConfig:
    upload_folder: Callable[[], str]           # Gradio's upload folder (read at request time)
    max_upload_bytes: int
    auth: tuple[str, str] | None = None
    public_metrics: bool = False
    logged_in: Callable[[Any], bool] = lambda scope: False   # does this request carry a valid login cookie?
    throttle: LoginThrottle = field(default_factory=LoginThrottle)


def request_id_of(scope) -> str:
    """The id a request is known by: a sane incoming X-Request-ID, else a fresh short one."""
    for key, value in scope.get("headers", ()):
        if key == b"x-request-id":
            text = value.decode("latin-1").strip()
            if 0 < len(text) <= 64 and all(c.isalnum() or c in "-_.:" for c in text):
                return text
    return uuid.uuid4().hex[:6]


def _client(scope) -> str:
    client = scope.get("client")
    return client[0] if client else "?"


def _is_inside(path: str, folder: str) -> bool:
    """True when `path`, with every link resolved, lies inside `folder` and names the same place unresolved."""
    try:
        absolute = os.path.abspath(path)
        real = os.path.realpath(path)
        root = os.path.realpath(folder)
    except (TypeError, ValueError, OSError):
        return False
    return real == absolute and os.path.commonpath([real, root]) == root and real != root


def refused_file_payloads(body: Any, upload_folder: str) -> list[str]:
    """Every file payload in a Gradio request body that does not point into the upload folder."""
    bad: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            meta = node.get("meta")
            is_file = isinstance(meta, dict) and meta.get("_type") == "gradio.FileData"
            if is_file or ("path" in node and ("orig_name" in node or "mime_type" in node)):
                path = node.get("path")
                if not isinstance(path, str) or not _is_inside(path, upload_folder):
                    bad.append(str(path)[:200])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(body)
    return bad


class HttpGuard:
    def __init__(self, app, config: GuardConfig):
        self.app = app
        self.config = config

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        # One id per request, from a proxy's X-Request-ID or made here: the handlers log under it and
        # every response names it.
        request_id = request_id_of(scope)
        headers = [(k, v) for k, v in scope.get("headers", ()) if k != b"x-request-id"]
        scope = dict(scope, headers=headers + [(b"x-request-id", request_id.encode())])
        send = _with_header(send, b"x-request-id", request_id.encode())
        path: str = scope.get("path", "")
        method: str = scope.get("method", "GET")
        if self.config.auth and self._is_private(path) and not self._authorized(scope):
            return await _reply(send, 401, {"error": "Log in first (or send HTTP Basic credentials)."},
                                extra=[(b"www-authenticate", b'Basic realm="CosyVoice Studio"')])
        if method == "POST" and path.rstrip("/").endswith("/login"):
            return await self._login(scope, receive, send)
        if method == "POST" and "/upload" in path:
            return await self._upload(scope, receive, send)
        if method == "POST" and path.startswith("/gradio_api/"):
            return await self._json_call(scope, receive, send)
        return await self.app(scope, receive, send)

    # ---- private routes ------------------------------------------------------------------------
    def _is_private(self, path: str) -> bool:
        if path in ("/docs", "/redoc", "/openapi.json") or path.startswith("/docs/"):
            return True
        return not self.config.public_metrics and path in ("/metrics", "/version")

    def _authorized(self, scope) -> bool:
        if self.config.logged_in(scope):
            return True
        for key, value in scope.get("headers", ()):
            if key == b"authorization" and value[:6].lower() == b"basic ":
                try:
                    user, _, password = base64.b64decode(value[6:]).decode("utf-8").partition(":")
                except (ValueError, UnicodeDecodeError):
                    return False
                want_user, want_password = self.config.auth
                return secrets.compare_digest(user, want_user) & secrets.compare_digest(password, want_password)
        return False

    # ---- login ---------------------------------------------------------------------------------
    async def _login(self, scope, receive, send):
        client = _client(scope)
        wait = self.config.throttle.wait_s(client)
        if wait > 0:
            logger.bind(req="-").warning(f"login from {client} refused: too many wrong passwords, "
                                         f"next try allowed in {wait:.0f} s")
            return await _reply(send, 429, {"detail": f"Too many failed logins from your address. "
                                                      f"Try again in {wait:.0f} s."},
                                extra=[(b"retry-after", str(max(1, round(wait))).encode())])
        status: list[int] = []

        async def watch(message):
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        await self.app(scope, receive, watch)
        if status and status[0] >= 400:
            delay = self.config.throttle.failed(client)
            logger.bind(req="-").warning(f"failed login from {client}"
                                         + (f"; next try allowed in {delay:.0f} s" if delay else ""))
        elif status:
            self.config.throttle.succeeded(client)

    # ---- uploads -------------------------------------------------------------------------------
    async def _upload(self, scope, receive, send):
        limit = self.config.max_upload_bytes
        length = _content_length(scope)
        message = (f"The upload is larger than the {limit // 2**20} MB limit. "
                   f"Upload a 3–15 s clip (WAV, FLAC, MP3 …).")
        if length is not None and length > limit:
            logger.bind(req=request_id_of(scope)).warning(f"refused upload of {length / 2**20:.0f} MB "
                                                          f"(limit {limit // 2**20} MB)")
            return await _reply(send, 413, {"error": message})
        received = 0

        async def counted():
            nonlocal received
            event = await receive()
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                if received > limit:
                    raise _TooLarge()
            return event

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            logger.bind(req=request_id_of(scope)).warning(f"refused an upload past {limit // 2**20} MB while "
                                                          f"it streamed")
            await _reply(send, 413, {"error": message})

    # ---- Gradio calls with file payloads ----------------------------------------------------------
    async def _json_call(self, scope, receive, send):
        body, more = b"", True
        while more:
            event = await receive()
            if event["type"] != "http.request":
                break
            body += event.get("body", b"")
            more = event.get("more_body", False)
            if len(body) > MAX_JSON_BYTES:
                return await _reply(send, 413, {"error": f"Request body over {MAX_JSON_BYTES // 2**20} MB."})
        try:
            parsed = json.loads(body) if body else None
        except (ValueError, UnicodeDecodeError):
            parsed = None
        if parsed is not None:
            bad = refused_file_payloads(parsed, self.config.upload_folder())
            if bad:
                request_id = request_id_of(scope)
                logger.bind(req=request_id).warning(f"refused: a file payload is not an upload of this app "
                                                    f"({len(bad)} path(s)); {PATH_REFUSED}")
                return await _reply(send, 400, {"error": PATH_REFUSED, "request_id": request_id})
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)


def _with_header(send, name: bytes, value: bytes):
    async def sending(message):
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != name]
            message = dict(message, headers=headers + [(name, value)])
        await send(message)
    return sending


class _TooLarge(Exception):
    pass


def _content_length(scope) -> int | None:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _reply(send, status: int, payload: dict, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    headers = [(b"content-type", b"application/json; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": body})


def upload_folder_size(folder: str | Path) -> int:
    """Bytes under Gradio's upload/cache folder (for the soak benchmark and /metrics)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total
