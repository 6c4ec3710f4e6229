"""What every HTTP request passes before Gradio or our routes see it (an ASGI middleware), and the one
gate every credential goes through.

- Request id: given once per request (a sane incoming X-Request-ID, else a fresh one) by
  `with_request_id`; everything else reads it with `request_id_of`.
- Credentials: `CredentialGate` checks the login form, HTTP Basic and the API's Bearer key — parsed
  here only, compared in constant time on bytes, any UTF-8 accepted — with one per-client back-off:
  after a few wrong ones a client is answered 429 with Retry-After, doubling up to 5 minutes.
  The /v1 router asks `gate.check_api(scope)`; this middleware asks it for the private routes.
- Private routes: with a login configured, /docs, /openapi.json and (unless --public-metrics)
  /metrics and /version need the login cookie or HTTP Basic credentials; /health and /ready stay open.
- Browsers cannot be used against the API: a state-changing request (POST, PUT, PATCH, DELETE) whose
  Origin is another site (or, without Origin, whose Sec-Fetch-Site says so) is refused 403 unless
  that origin is allowed (--allow-origin); JSON routes refuse a body that is not application/json (415).
- File inputs: a Gradio API call may name a server path as its file payload. Only files that were
  uploaded to this app (Gradio's upload folder) are accepted; any other path is refused with one
  message that does not say whether it exists, before anything opens it.
- Sizes and disk: uploads over the limit are refused from their Content-Length (and cut off while they
  stream when there is none), and charged to the client's and the cache's budget (upload_budget);
  other request bodies are small JSON, capped at MAX_JSON_BYTES.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlsplit

from loguru import logger

from cosyvoice.server.upload_budget import UploadBudget, upload_folder_size   # noqa: F401  (upload_folder_size: bench)

PATH_REFUSED = ("Prompt audio must be a file uploaded with this request (the UI's upload box, gradio_client's "
                "handle_file, or POST /gradio_api/upload). Server paths and links are not accepted.")
MAX_JSON_BYTES = 1 * 2**20
REQUEST_ID_KEY = "cosyvoice.request_id"
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
UPLOAD_PATHS = frozenset({"/upload", "/gradio_api/upload", "/gradio_api/process_recording"})
# Routes whose body is JSON: the /v1 API (except the multipart uploads) and Gradio's call routes.
JSON_ROUTES = re.compile(r"^/(v1/.+|gradio_api/(queue/join|call/.+|run/.+|api/.+))$")
MULTIPART_ROUTES = frozenset({"/v1/audio/voices", "/v1/files"})
EITHER_ROUTES = frozenset({"/v1/jobs"})          # JSON lines, or a JSONL/text file as multipart
DEFAULT_PORTS = {"http": "80", "https": "443"}


# ---- request id ---------------------------------------------------------------------------------
def _new_request_id(scope) -> str:
    for key, value in scope.get("headers", ()):
        if key == b"x-request-id":
            text = value.decode("latin-1").strip()
            if 0 < len(text) <= 64 and all(c.isalnum() or c in "-_.:" for c in text):
                return text
    return uuid.uuid4().hex[:6]


def request_id_of(scope) -> str:
    """The id a request is known by (given by `with_request_id`; parsed here when it has not run)."""
    return scope.get(REQUEST_ID_KEY) or _new_request_id(scope)


def with_request_id(scope, send):
    """Give the request its id once: stored in the scope, in the X-Request-ID header the handlers read
    and on every response. Returns the new scope and send; a second call keeps the first id."""
    request_id = request_id_of(scope)
    headers = [(k, v) for k, v in scope.get("headers", ()) if k != b"x-request-id"]
    scope = dict(scope, headers=headers + [(b"x-request-id", request_id.encode())])
    scope[REQUEST_ID_KEY] = request_id
    return scope, _with_header(send, b"x-request-id", request_id.encode())


def client_of(scope) -> str:
    client = scope.get("client")
    return client[0] if client else "?"


def _header(scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value
    return None


# ---- credentials --------------------------------------------------------------------------------
@dataclass
class CredentialThrottle:
    """Per-client delay after wrong credentials: 1 s after the 3rd, doubling up to 5 minutes."""
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


@dataclass(frozen=True)
class Refusal:
    """Why a request may not pass, as the client will be told."""
    status: int
    message: str
    code: str
    retry_after_s: int | None = None
    challenge: str | None = None        # the WWW-Authenticate header of a 401


BASIC_CHALLENGE = 'Basic realm="CosyVoice Studio", charset="UTF-8"'
BEARER_CHALLENGE = 'Bearer realm="CosyVoice Studio API"'


def _encodings(text: str) -> list[bytes]:
    """The bytes a client may send for `text`: UTF-8 (RFC 7617, browsers, httpx), or Latin-1 (requests)."""
    forms = [text.encode("utf-8")]
    try:
        if text.encode("latin-1") != forms[0]:
            forms.append(text.encode("latin-1"))
    except UnicodeEncodeError:
        pass
    return forms


def _same(given: bytes, wanted: list[bytes]) -> bool:
    matched = False
    for form in wanted:                  # every form compared, whatever matched: no timing hint
        matched |= hmac.compare_digest(given, form)
    return matched


class CredentialGate:
    """The one place a credential is checked: the login form (through Gradio's auth callable),
    HTTP Basic and the Bearer API key, all with the same per-client back-off."""

    def __init__(self, auth: tuple[str, str] | None = None, api_key: str | None = None,
                 throttle: CredentialThrottle | None = None, logged_in: Callable[[Any], bool] = lambda scope: False):
        self._user = _encodings(auth[0]) if auth else None
        self._password = _encodings(auth[1]) if auth else None
        self._key = api_key.encode("utf-8") if api_key else None
        self.throttle = throttle or CredentialThrottle()
        self.logged_in = logged_in

    @property
    def login_required(self) -> bool:
        return self._user is not None

    def password_matches(self, user: str | bytes, password: str | bytes) -> bool:
        """Gradio's auth callable for the login form; also used for HTTP Basic."""
        if self._user is None or self._password is None:
            return False
        user_bytes = user.encode("utf-8") if isinstance(user, str) else user
        password_bytes = password.encode("utf-8") if isinstance(password, str) else password
        return _same(user_bytes, self._user) & _same(password_bytes, self._password)

    def check_private(self, scope) -> Refusal | None:
        """/docs, /openapi.json, /metrics, /version: the login cookie or HTTP Basic."""
        if not self.login_required or self.logged_in(scope):
            return None
        return self._check(scope, "basic", "Log in first (or send HTTP Basic credentials).")

    def check_api(self, scope) -> Refusal | None:
        """The /v1 API: the Bearer key when one is set, else the login's HTTP Basic credentials, else open."""
        if self._key is not None:
            return self._check(scope, "bearer", "Incorrect API key provided. Send it as 'Authorization: Bearer "
                                                "<key>' (the server's --api-key or COSYVOICE_API_KEY).")
        if self.login_required:
            return self._check(scope, "basic", "Send the login's user and password as HTTP Basic credentials "
                                               "(the server's --auth).")
        return None

    def _check(self, scope, scheme: str, missing: str) -> Refusal | None:
        header = _header(scope, b"authorization") or b""
        given, _, token = header.strip().partition(b" ")
        wrong = Refusal(401, missing, "invalid_api_key", challenge=BASIC_CHALLENGE if scheme == "basic"
                        else BEARER_CHALLENGE)
        client, log = client_of(scope), logger.bind(req=request_id_of(scope))
        if given.lower() != scheme.encode():
            log.warning(f"{scope.get('method')} {scope.get('path', '')} from {client} refused: no {scheme} "
                        f"credentials sent")
            return wrong
        wait = self.throttle.wait_s(client)
        if wait > 0:
            log.warning(f"{scheme} credentials from {client} on {scope.get('path', '')} refused unchecked: too many "
                        f"wrong ones, next try allowed in {wait:.0f} s")
            return too_many_failures(wait)
        if self._matches(scheme, token.strip()):
            self.throttle.succeeded(client)
            return None
        delay = self.throttle.failed(client)
        log.warning(f"wrong {scheme} credentials from {client} on {scope.get('path', '')}"
                    + (f"; next try allowed in {delay:.0f} s" if delay else ""))
        return wrong

    def _matches(self, scheme: str, token: bytes) -> bool:
        if scheme == "bearer":
            return self._key is not None and hmac.compare_digest(token, self._key)
        try:
            user, sep, password = base64.b64decode(token, validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        return bool(sep) and self.password_matches(user, password)


def too_many_failures(wait_s: float) -> Refusal:
    seconds = max(1, round(wait_s))
    return Refusal(429, f"Too many failed logins from your address (wrong password or API key). "
                        f"Try again in {seconds} s.", "too_many_failed_logins", seconds)


# ---- cross-site requests ------------------------------------------------------------------------
def _origin_key(origin: str) -> str | None:
    """`scheme://host[:port]` with the default port dropped and lower-cased; None when unreadable."""
    try:
        parts = urlsplit(origin.strip().lower())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    shown_port = "" if port is None or str(port) == DEFAULT_PORTS[parts.scheme] else f":{port}"
    return f"{parts.scheme}://{host}{shown_port}"


def normalize_origins(origins: list[str]) -> frozenset[str]:
    keys = [_origin_key(origin) for origin in origins]
    if None in keys:
        raise ValueError("--allow-origin takes origins like https://studio.example.com (scheme, host, port)")
    return frozenset(key for key in keys if key is not None)


@dataclass(frozen=True)
class OriginPolicy:
    allowed: frozenset[str] = frozenset()

    def refusal(self, scope) -> Refusal | None:
        """A browser request from another site that would change something: refused unless allowed."""
        if scope.get("method") not in STATE_CHANGING:
            return None
        origin = (_header(scope, b"origin") or b"").decode("latin-1").strip()
        site = (_header(scope, b"sec-fetch-site") or b"").decode("latin-1").strip().lower()
        if origin:
            key = _origin_key(origin)
            if key in self.allowed or self._same_origin(scope, key):
                return None
        elif site not in ("cross-site", "same-site"):
            return None                         # not a browser (curl, SDKs, gradio_client) or same origin
        return Refusal(403, f"Cross-site request refused: a page on {origin or 'another site'} may not "
                            f"{scope.get('method')} to this server. Call it from the app's own pages, "
                            f"or have the operator allow that origin with --allow-origin.", "cross_origin_refused")

    @staticmethod
    def _same_origin(scope, key: str | None) -> bool:
        if key is None:
            return False
        scheme, _, netloc = key.partition("://")
        for name in (b"host", b"x-forwarded-host"):      # nginx passes the browser's Host on ($http_host)
            host = (_header(scope, name) or b"").decode("latin-1").strip().lower()
            if host.endswith(f":{DEFAULT_PORTS[scheme]}"):
                host = host.rsplit(":", 1)[0]
            if host and host == netloc:
                return True
        return False


def content_type_refusal(scope) -> Refusal | None:
    """A JSON route given a body that does not say it is JSON (a text/plain form post, for one): 415."""
    path = scope.get("path", "")
    if scope.get("method") not in ("POST", "PUT", "PATCH") or not JSON_ROUTES.match(path):
        return None
    declared = (_header(scope, b"content-type") or b"").decode("latin-1").split(";")[0].strip().lower()
    if path.rstrip("/") in MULTIPART_ROUTES:
        wanted, ok = "multipart/form-data", declared == "multipart/form-data"
    elif path.rstrip("/") in EITHER_ROUTES and declared == "multipart/form-data":
        wanted, ok = "multipart/form-data", True
    else:
        wanted, ok = "application/json", declared == "application/json" or declared.endswith("+json")
        ok = ok or (not declared and not _has_body(scope))
    if ok:
        return None
    return Refusal(415, f"This route takes {wanted}; the request says {declared or 'nothing'} "
                        f"(send Content-Type: {wanted}).", "unsupported_media_type")


def _has_body(scope) -> bool:
    length = _content_length(scope)
    return bool(length) or _header(scope, b"transfer-encoding") is not None


# ---- the middleware -----------------------------------------------------------------------------
@dataclass
class GuardConfig:
    upload_folder: Callable[[], str]           # Gradio's upload folder (read at request time)
    max_upload_bytes: int
    gate: CredentialGate = field(default_factory=CredentialGate)
    public_metrics: bool = False
    origins: OriginPolicy = field(default_factory=OriginPolicy)
    uploads: UploadBudget | None = None        # None: no per-client or total budget (tests of other parts)


class HttpGuard:
    def __init__(self, app, config: GuardConfig):
        self.app = app
        self.config = config

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        scope, send = with_request_id(scope, send)
        path: str = scope.get("path", "")
        method: str = scope.get("method", "GET")
        refusal = (self.config.origins.refusal(scope) or content_type_refusal(scope)
                   or (self.config.gate.check_private(scope) if self._is_private(path) else None))
        if refusal is not None:
            return await refuse(scope, send, refusal, log=refusal.status not in (401, 429))
        if method == "POST" and path.rstrip("/").endswith("/login"):
            return await self._login(scope, receive, send)
        if method == "POST" and path.rstrip("/") in UPLOAD_PATHS:
            return await self._upload(scope, receive, send)
        if method == "POST" and path.startswith("/gradio_api/"):
            return await self._json_call(scope, receive, send)
        return await self.app(scope, receive, send)

    def _is_private(self, path: str) -> bool:
        if path in ("/docs", "/redoc", "/openapi.json") or path.startswith("/docs/"):
            return True
        return not self.config.public_metrics and path in ("/metrics", "/version")

    # ---- login form: Gradio checks the password (with gate.password_matches), we keep the score ----
    async def _login(self, scope, receive, send):
        client, throttle = client_of(scope), self.config.gate.throttle
        wait = throttle.wait_s(client)
        if wait > 0:
            logger.bind(req=request_id_of(scope)).warning(f"login from {client} refused: too many wrong passwords, "
                                                          f"next try allowed in {wait:.0f} s")
            return await refuse(scope, send, too_many_failures(wait), log=False)
        status: list[int] = []

        async def watch(message):
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        await self.app(scope, receive, watch)
        if status and status[0] >= 400:
            delay = throttle.failed(client)
            logger.bind(req=request_id_of(scope)).warning(
                f"failed login from {client}" + (f"; next try allowed in {delay:.0f} s" if delay else ""))
        elif status:
            throttle.succeeded(client)

    # ---- uploads -------------------------------------------------------------------------------
    async def _upload(self, scope, receive, send):
        limit, budget = self.config.max_upload_bytes, self.config.uploads
        length, log = _content_length(scope), logger.bind(req=request_id_of(scope))
        too_large = Refusal(413, f"The upload is larger than the {limit // 2**20} MB limit. "
                                 f"Upload a 3–15 s clip (WAV, FLAC, MP3 …).", "request_too_large")
        if length is not None and length > limit:
            log.warning(f"refused upload of {length / 2**20:.0f} MB (limit {limit // 2**20} MB)")
            return await refuse(scope, send, too_large, log=False)
        client, declared = client_of(scope), length or 0
        over = budget.admit(client, declared) if budget else None
        if over is not None:
            return await refuse(scope, send, Refusal(over.status, over.message, "upload_budget", over.retry_after_s))
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
            log.warning(f"refused an upload past {limit // 2**20} MB while it streamed")
            await refuse(scope, send, too_large, log=False)
        finally:
            if budget:
                budget.settle(client, declared, received)

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
                return await refuse(scope, send, Refusal(413, f"Request body over {MAX_JSON_BYTES // 2**20} MB.",
                                                         "request_too_large"))
        try:
            parsed = json.loads(body) if body else None
        except (ValueError, UnicodeDecodeError, RecursionError):
            parsed = None
        bad = refused_file_payloads(parsed, self.config.upload_folder()) if parsed is not None else []
        if bad:
            logger.bind(req=request_id_of(scope)).warning(f"refused: a file payload is not an upload of this app "
                                                          f"({len(bad)} path(s)); {PATH_REFUSED}")
            return await refuse(scope, send, Refusal(400, PATH_REFUSED, "invalid_file"), log=False)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)


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
    value = _header(scope, b"content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def error_body(scope, refusal: Refusal) -> dict:
    """The refusal in the shape the caller reads: OpenAI's error object on /v1, else {error, request_id}."""
    request_id = request_id_of(scope)
    if scope.get("path", "").startswith("/v1/"):
        kind = "rate_limit_error" if refusal.status == 429 else "invalid_request_error"
        return {"error": {"message": f"{refusal.message} (request {request_id})", "type": kind, "param": None,
                          "code": refusal.code}}
    return {"error": refusal.message, "request_id": request_id}


async def refuse(scope, send, refusal: Refusal, log: bool = True) -> None:
    """Answer `refusal` (with the WARNING line unless the caller wrote a better one)."""
    if log:
        logger.bind(req=request_id_of(scope)).warning(
            f"{scope.get('method')} {scope.get('path', '')} from {client_of(scope)} refused "
            f"({refusal.status}): {refusal.message}")
    extra = [(name.encode(), value.encode()) for name, value in _refusal_headers(refusal).items()]
    await _reply(send, refusal.status, error_body(scope, refusal), extra)


def refusal_response(scope, refusal: Refusal):
    """The same answer from inside a route (the /v1 router's auth): a JSONResponse."""
    from starlette.responses import JSONResponse

    headers = _refusal_headers(refusal) | {"x-request-id": request_id_of(scope)}
    return JSONResponse(error_body(scope, refusal), status_code=refusal.status, headers=headers)


def _refusal_headers(refusal: Refusal) -> dict[str, str]:
    headers = {"retry-after": str(refusal.retry_after_s)} if refusal.retry_after_s else {}
    if refusal.challenge:
        headers["www-authenticate"] = refusal.challenge
    return headers


async def _reply(send, status: int, payload: dict, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    headers = [(b"content-type", b"application/json; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": body})
