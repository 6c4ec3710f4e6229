"""One gate for every credential, and secrets never written: raw HTTP as a password-guessing script sends it.

Each client below connects from its own loopback address (127.0.0.x), so the per-client back-off of one
scenario does not leak into the next. Every refusal is checked for its status, its message (with the
request id where the body has one), the WARNING line under that id, and /health answering within 1 s.
"""
from __future__ import annotations

import base64
import os
import subprocess

import httpx
import pytest

from conftest import PYTHON, ROOT, free_port, start_app, stop_app
from test_security import health_within_1s, warning_for

PASSWORD = "pässwörd"                  # non-ASCII on purpose: every Basic attempt was a 500 with it
CMDLINE_PASSWORD = "cmdline-secret-1"
API_KEY = "sk-test-" + "k3y" * 8
PRIVATE_ROUTES = ["/version", "/metrics", "/docs", "/openapi.json", "/v1/models"]


def client_from(address: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=10)


def basic(user: str, password: str, encoding: str = "utf-8") -> dict:
    token = base64.b64encode(f"{user}:{password}".encode(encoding)).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture(scope="module")
def login_app(tmp_path_factory):
    """--auth only (from COSYVOICE_AUTH): the login form, /docs & co. and /v1 all take the login."""
    os.environ["COSYVOICE_AUTH"] = f"admin:{PASSWORD}"
    try:
        app = start_app(tmp_path_factory.mktemp("gate_login"), "--engine", "lite")
    finally:
        del os.environ["COSYVOICE_AUTH"]
    yield app
    stop_app(app)


@pytest.fixture(scope="module")
def key_app(tmp_path_factory):
    """--api-key from a file, --auth on the command line (the unsafe way, to see it masked and warned)."""
    tmp = tmp_path_factory.mktemp("gate_key")
    key_file = tmp / "api.key"
    key_file.write_text(API_KEY + "\n")
    key_file.chmod(0o600)
    app = start_app(tmp, "--engine", "lite", "--api-key-file", str(key_file), "--auth", f"admin:{CMDLINE_PASSWORD}")
    yield app
    stop_app(app)


def guess_until_refused(client: httpx.Client, url: str, headers: dict, tries: int = 30) -> list[httpx.Response]:
    return [client.get(url, headers=headers) for _ in range(tries)]


@pytest.mark.parametrize("index,path", list(enumerate(PRIVATE_ROUTES)))
def test_wrong_basic_passwords_are_throttled_on_every_route(login_app, index, path):
    guesser = client_from(f"127.0.0.{10 + index}")
    answers = guess_until_refused(guesser, login_app.url + path, basic("admin", "guess"))
    statuses = [answer.status_code for answer in answers]
    assert statuses[:2] == [401, 401] and 500 not in statuses, statuses
    assert 429 in statuses[:6], statuses
    refused = answers[-1]
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    request_id = refused.headers["x-request-id"]
    message = refused.json()["error"]["message"] if path.startswith("/v1") else refused.json()["error"]
    assert "Too many failed logins" in message
    if path.startswith("/v1"):
        assert f"(request {request_id})" in message and refused.json()["error"]["code"] == "too_many_failed_logins"
    else:
        assert refused.json()["request_id"] == request_id
    assert "refused unchecked" in warning_for(login_app, request_id)
    # While blocked even the right password is not checked; another client is not affected.
    assert guesser.get(login_app.url + path, headers=basic("admin", PASSWORD)).status_code == 429
    assert client_from(f"127.0.0.{40 + index}").get(login_app.url + path,
                                                    headers=basic("admin", PASSWORD)).status_code == 200
    health_within_1s(login_app)


def test_the_login_form_shares_the_back_off_with_basic(login_app):
    guesser = client_from("127.0.0.20")
    for _ in range(3):
        assert guesser.get(login_app.url + "/version", headers=basic("admin", "guess")).status_code == 401
    form = guesser.post(login_app.url + "/login", data={"username": "admin", "password": "guess"})
    assert form.status_code == 429 and "Too many failed logins" in form.text
    assert int(form.headers["retry-after"]) >= 1


def test_any_utf8_credential_is_handled_never_a_500(login_app):
    url = login_app.url + "/version"
    odd = [basic("ädmin", "x"), {"Authorization": "Basic %%%not-base64"}, {"Authorization": b"Basic \xff\xfe"},
           {"Authorization": "Basic " + base64.b64encode(b"\xff\xfe:\x00").decode()}]
    for index, headers in enumerate(odd):          # each from its own address: the back-off is not the point
        answer = client_from(f"127.0.0.{50 + index}").get(url, headers=headers)
        assert answer.status_code == 401, (headers, answer.text)
        assert answer.headers["www-authenticate"].startswith("Basic")
    fresh = client_from("127.0.0.22")
    assert fresh.get(url, headers=basic("admin", PASSWORD)).status_code == 200                # UTF-8 (RFC 7617)
    assert fresh.get(url, headers=basic("admin", PASSWORD, "latin-1")).status_code == 200     # requests' encoding
    assert fresh.get(login_app.url + "/v1/models", headers=basic("admin", PASSWORD)).status_code == 200
    login = fresh.post(login_app.url + "/login", data={"username": "admin", "password": PASSWORD})
    assert login.status_code == 200, login.text
    assert fresh.get(url).status_code == 200                     # the login cookie now opens /version
    output = (login_app.log_dir.parent / "app.out").read_text(errors="replace") + login_app.log_text()
    assert "Traceback" not in output and PASSWORD not in output
    health_within_1s(login_app)


def test_wrong_api_keys_are_throttled_and_answered_in_openais_shape(key_app):
    guesser = client_from("127.0.0.30")
    url = key_app.url + "/v1/audio/voices"
    statuses = [guesser.get(url, headers={"Authorization": f"Bearer sk-guess-{n}"}).status_code for n in range(30)]
    assert statuses[:2] == [401, 401] and 429 in statuses[:6] and 500 not in statuses, statuses
    refused = guesser.get(url, headers={"Authorization": f"Bearer {API_KEY}"})
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    error = refused.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "too_many_failed_logins"
    assert f"(request {refused.headers['x-request-id']})" in error["message"]
    assert "refused unchecked" in warning_for(key_app, refused.headers["x-request-id"])
    other = client_from("127.0.0.31")
    non_ascii = other.get(url, headers={"Authorization": "Bearer ключ-ü".encode()})
    assert non_ascii.status_code == 401 and non_ascii.json()["error"]["code"] == "invalid_api_key"
    assert other.get(url, headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
    health_within_1s(key_app)


def test_the_jobs_and_batches_routes_share_the_api_keys_back_off(key_app):
    guesser = client_from("127.0.0.33")
    bare = guesser.get(key_app.url + "/v1/jobs")
    assert bare.status_code == 401 and bare.headers["www-authenticate"].startswith("Bearer")
    assert bare.json()["error"]["code"] == "invalid_api_key"
    assert f"(request {bare.headers['x-request-id']})" in bare.json()["error"]["message"]
    wrong = {"Authorization": "Bearer sk-guess"}
    statuses = [guesser.get(key_app.url + path, headers=wrong).status_code
                for path in ("/v1/jobs", "/v1/batches", "/v1/jobs", "/v1/files/file-x", "/v1/jobs")]
    assert statuses[:2] == [401, 401] and statuses[-1] == 429, statuses
    right = {"Authorization": f"Bearer {API_KEY}"}         # blocked for now: even the right key is not checked
    posted = guesser.post(key_app.url + "/v1/jobs", headers=right, json={"lines": ["Hi."]})
    voices = guesser.get(key_app.url + "/v1/audio/voices", headers=right)      # one back-off for every /v1 route
    assert (posted.status_code, voices.status_code) == (429, 429) and int(posted.headers["retry-after"]) >= 1
    assert posted.json()["error"]["code"] == "too_many_failed_logins"
    assert "refused unchecked" in warning_for(key_app, posted.headers["x-request-id"])
    other = client_from("127.0.0.34")
    assert other.get(key_app.url + "/v1/jobs", headers=right).json()["object"] == "list"
    assert other.get(key_app.url + "/v1/batches", headers=right).status_code == 200


def test_secrets_are_masked_warned_about_and_never_written(key_app):
    from cosyvoice.ops.log import flush

    client_from("127.0.0.32").get(key_app.url + "/v1/models", headers={"Authorization": "Bearer wrong"})
    flush()
    written = key_app.log_text() + (key_app.log_dir.parent / "app.out").read_text(errors="replace")
    assert API_KEY not in written and CMDLINE_PASSWORD not in written
    assert "--auth ***" in written and "--api-key-file" in written
    warning = next(line for line in written.splitlines() if "--auth on the command line" in line)
    assert "| WARNING |" in warning and "COSYVOICE_AUTH" in warning


def test_secrets_come_from_a_file_or_the_environment(tmp_path):
    from cosyvoice.settings import StartupError, configs_from

    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    key_file.chmod(0o644)
    config = configs_from(["--api-key-file", str(key_file)],
                          {"COSYVOICE_AUTH": "ann:from-env", "COSYVOICE_API_KEY": "ignored"})
    assert (config.server.auth, config.server.api_key) == ("ann:from-env", "from-file")
    assert config.warnings and "chmod 600" in config.warnings[0]
    with pytest.raises(StartupError, match="both given"):
        configs_from(["--api-key", "x", "--api-key-file", str(key_file)], {})
    (tmp_path / "empty").write_text("")
    with pytest.raises(StartupError, match="is empty"):
        configs_from(["--auth-file", str(tmp_path / "empty")], {})
    with pytest.raises(StartupError, match="cannot be read"):
        configs_from(["--auth-file", str(tmp_path / "missing")], {})


def test_an_unreadable_secret_file_stops_the_start_with_a_clear_message(tmp_path):
    result = subprocess.run([PYTHON, str(ROOT / "app.py"), "--engine", "lite", "--port", str(free_port()),
                             "--api-key-file", str(tmp_path / "missing.key"), "--log-dir", str(tmp_path / "logs")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "--api-key-file" in result.stdout and "cannot be read" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
