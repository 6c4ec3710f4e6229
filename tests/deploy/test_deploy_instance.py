"""cosyvoice/server/instance.py: every response names the instance and carries the request id; the test-only
fault switch fails exactly what it says."""
from __future__ import annotations

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from cosyvoice.errors import StudioError
from cosyvoice.server.http_guard import GuardConfig, HttpGuard
from cosyvoice.server.instance import InstanceMiddleware, instance_info


def client_for(fault: str | None = None) -> TestClient:
    app = FastAPI()

    @app.get("/health")
    async def health():
        return {"ok": True}

    @app.get("/whoami")
    async def whoami(request: Request):
        return {"request_id": request.headers["x-request-id"]}     # what the app's handlers log under

    @app.post("/gradio_api/queue/join")
    async def join():
        return {"event_id": "e1"}

    @app.get("/config")
    async def config():
        return {}

    # As in app.create_app: the guard owns the request id, the instance middleware wraps it.
    app.add_middleware(HttpGuard, config=GuardConfig(upload_folder=lambda: "/nonexistent", max_upload_bytes=2**20))
    app.add_middleware(InstanceMiddleware, info=instance_info(7863, name="gpu-3", fault=fault))
    return TestClient(app)


def test_instance_and_request_id_on_every_response():
    client = client_for()
    given = client.get("/whoami", headers={"X-Request-ID": "lb-42"})
    assert given.headers["x-instance"] == "gpu-3"
    assert given.headers["x-request-id"] == "lb-42" == given.json()["request_id"]
    made = client.get("/whoami")
    assert made.headers["x-request-id"] == made.json()["request_id"] and len(made.json()["request_id"]) >= 6
    odd = client.get("/whoami", headers={"X-Request-ID": "bad id\twith spaces"})
    assert odd.headers["x-request-id"] != "bad id\twith spaces"
    assert client.get("/missing").headers["x-instance"] == "gpu-3"      # errors too


def test_default_instance_name_is_host_and_port():
    info = instance_info(7861)
    assert info.name.endswith(":7861") and info.fault is None


def test_fail_synthesis_fails_only_synthesis_posts():
    client = client_for("fail-synthesis")
    failed = client.post("/gradio_api/queue/join", json={})
    assert failed.status_code == 500 and "fail-synthesis" in failed.json()["error"]
    assert failed.headers["x-instance"] == "gpu-3"
    assert client.get("/config").status_code == 200
    assert client.get("/health").status_code == 200


def test_fail_requests_fails_everything_but_the_probes():
    client = client_for("fail-requests")
    assert client.get("/config").status_code == 500
    assert client.post("/gradio_api/queue/join", json={}).status_code == 500
    assert client.get("/health").status_code == 200


def test_unknown_fault_is_refused_at_start_up():
    with pytest.raises(StudioError, match="not a known fault"):
        instance_info(7861, fault="fail-everything")
