"""Disk is a budget: /gradio_api/upload, driven the way a disk-filling script drives it, stops one client
after its per-minute count or megabytes (429 + Retry-After) and everyone once the upload cache holds its
total (507), with the service's message, a WARNING line, and /health answering throughout."""
from __future__ import annotations

import os

import httpx
import pytest

from conftest import ROOT, start_app, stop_app
from cosyvoice.server.upload_budget import upload_folder_size
from test_security import health_within_1s, warning_for

MB = 2**20


@pytest.fixture(scope="module")
def budget_app(tmp_path_factory):
    app = start_app(tmp_path_factory.mktemp("upload_budget"), "--engine", "lite", "--uploads-per-minute", "4",
                    "--upload-mb-per-minute", "3", "--upload-cache-mb", "8")
    yield app
    stop_app(app)


def cache_of(app):
    return ROOT / ".run" / f"gradio-{app.port}"


def upload(app, address: str, size: int) -> httpx.Response:
    transport = httpx.HTTPTransport(local_address=address)
    with httpx.Client(transport=transport, timeout=30) as client:
        return client.post(f"{app.url}/gradio_api/upload",
                           files={"files": ("clip.wav", os.urandom(size), "audio/wav")})


def assert_refused(app, response: httpx.Response, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    assert words in response.json()["error"]
    assert response.json()["request_id"] == response.headers["x-request-id"]
    assert int(response.headers["retry-after"]) >= 1
    assert words in warning_for(app, response.headers["x-request-id"])


def test_one_client_is_limited_by_count_per_minute(budget_app):
    answers = [upload(budget_app, "127.0.0.60", 10_000) for _ in range(6)]
    assert [a.status_code for a in answers[:4]] == [200] * 4
    assert_refused(budget_app, answers[4], 429, "Too many uploads from your address")
    assert upload(budget_app, "127.0.0.61", 10_000).status_code == 200      # another client is not affected
    health_within_1s(budget_app)


def test_one_client_is_limited_by_megabytes_per_minute(budget_app):
    answers = [upload(budget_app, "127.0.0.62", int(1.2 * MB)) for _ in range(3)]
    assert [a.status_code for a in answers[:2]] == [200, 200]
    assert_refused(budget_app, answers[2], 429, "3 MB a minute")
    health_within_1s(budget_app)


def test_the_cache_as_a_whole_is_capped_with_507(budget_app):
    statuses = []
    for index in range(8):                      # 8 clients × 2 × 1.2 MB would be 19 MB against an 8 MB total
        for _ in range(2):
            answer = upload(budget_app, f"127.0.0.{70 + index}", int(1.2 * MB))
            statuses.append(answer.status_code)
            if answer.status_code == 507:
                assert_refused(budget_app, answer, 507, "upload space is full")
    assert 507 in statuses and set(statuses) <= {200, 507}, statuses
    assert upload_folder_size(cache_of(budget_app)) <= 8 * MB
    health_within_1s(budget_app)
