"""Who answered and which request it was: the per-instance facts a load balancer needs.

`InstanceMiddleware` is plain ASGI so it sees every route (FastAPI's and the mounted Gradio app's,
streamed responses included):
- every response carries `X-Instance` (this instance's name) and `X-Request-ID`: being outermost, this is
  where a request is given its id (cosyvoice.server.http_guard.with_request_id: nginx's `$request_id` when sane,
  else a fresh one), so even a refusal made here names the id every inner layer logs under;
- `COSYVOICE_FAULT` (ServerConfig.fault, read once at start-up by cosyvoice.settings) is a test-only fault switch (nothing sets it by default) for
  rehearsing a broken canary:
    fail-synthesis  every synthesis request (a POST that starts a job) answers HTTP 500;
    fail-requests   every request except the probes (/health, /ready, /metrics, /version) answers 500,
                    like a build that cannot serve at all. nginx OSS counts a 5xx towards max_fails only
                    when it may retry the request (GETs), so this is the fault passive health drains;
                    a POST's 500 is passed to the client, never re-sent, and shows in Prometheus instead.
"""
from __future__ import annotations

import json
import re
import socket
from dataclasses import dataclass

from cosyvoice.errors import StudioError
from cosyvoice.server.http_guard import request_id_of, with_request_id

FAULT_ENV = "COSYVOICE_FAULT"
INSTANCE_ENV = "COSYVOICE_INSTANCE"
FAULTS = ("fail-synthesis", "fail-requests")

# Requests that start a synthesis: Gradio's queue (UI and gradio_client), its REST "call" API, the
# queue-less run API, and the OpenAI-style endpoint once it exists.
SYNTHESIS_PATHS = re.compile(r"^/(gradio_api/(queue/join|call/[^/]+|run/[^/]+)|v1/audio/speech)/?$")
PROBE_PATHS = ("/health", "/ready", "/metrics", "/version")


@dataclass(frozen=True)
class InstanceInfo:
    name: str           # what X-Instance says, e.g. "myhost:7861" or COSYVOICE_INSTANCE
    port: int
    fault: str | None   # the test-only fault switch, None in normal operation


def instance_info(port: int, name: str | None = None, fault: str | None = None) -> InstanceInfo:
    """This process's identity; `name` (COSYVOICE_INSTANCE) overrides the default host:port name."""
    name = name or f"{socket.gethostname()}:{port}"
    fault = fault or None
    if fault is not None and fault not in FAULTS:
        raise StudioError(f"{FAULT_ENV}={fault!r} is not a known fault (known: {', '.join(FAULTS)}); "
                          f"unset it to run normally")
    return InstanceInfo(name=name, port=port, fault=fault)


class InstanceMiddleware:
    def __init__(self, app, info: InstanceInfo):
        self.app, self.info = app, info
        self._instance_header = (b"x-instance", info.name.encode("latin-1", "replace"))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope, send = with_request_id(scope, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-instance"]
                message = {**message, "headers": kept + [self._instance_header]}
            await send(message)

        if self._faulty(scope):
            await self._fail(send_with_headers, request_id_of(scope))
            return
        await self.app(scope, receive, send_with_headers)

    def _faulty(self, scope) -> bool:
        path = scope.get("path", "")
        if self.info.fault == "fail-synthesis":
            return scope.get("method") == "POST" and bool(SYNTHESIS_PATHS.match(path))
        if self.info.fault == "fail-requests":
            return path not in PROBE_PATHS
        return False

    async def _fail(self, send, request_id: str) -> None:
        body = json.dumps({"error": f"request refused by {FAULT_ENV}={self.info.fault} on instance "
                                    f"{self.info.name} (test fault switch; unset it and restart)",
                           "request_id": request_id}).encode()
        await send({"type": "http.response.start", "status": 500,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
