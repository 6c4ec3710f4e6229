"""Log lines are one line: what a client sends (an instruction, a URL path) cannot forge a line in
runtime.log, and runtime.jsonl stays one valid JSON object per line."""
from __future__ import annotations

import json
import re
import time

import httpx
import pytest

from conftest import ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT, start_app, stop_app
from cosyvoice.ops.log import escape, flush
from test_security import health_within_1s, warning_for

API_KEY = "sk-escape-test"
FORGED = "2026-01-01 00:00:00.000 | ERROR   | req=forged | disk on fire, restart me"
LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \| (TRACE|DEBUG|INFO|SUCCESS|WARNING|ERROR|CRITICAL) *"
                  r"\| req=\S+ \| ")


@pytest.fixture(scope="module")
def json_app(tmp_path_factory):
    app = start_app(tmp_path_factory.mktemp("log_escaping"), "--engine", "lite", "--api-key", API_KEY,
                    "--log-format", "json")
    yield app
    stop_app(app)


def assert_every_line_is_one_record(app) -> list[dict]:
    """Each runtime.log line starts like a record and holds no control character; each JSON line parses."""
    flush()
    for line in app.log_text().splitlines():
        assert LINE.match(line), f"not a log record: {line!r}"
        assert not re.search(r"[\x00-\x1f\x7f]", line), f"raw control character in {line!r}"
    json_lines = (app.log_dir / "runtime.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in json_lines]


@pytest.mark.parametrize("raw,shown", [("a\nb", r"a\nb"), ("\r\t", r"\r\t"), ("\x1b[31m", r"\x1b[31m"),
                                       ("\x00\x07\x7f", r"\x00\x07\x7f"), ("\u2028\u202e", r"\u2028\u202e"),
                                       ("你好 ünïcode", "你好 ünïcode")])
def test_escape_shows_control_characters_and_keeps_text(raw, shown):
    assert escape(raw) == shown


def test_a_newline_in_an_instruction_cannot_forge_a_line(json_app):
    from gradio_client import handle_file

    client = json_app.client()
    client.headers["X-Request-ID"] = "instr-forge"
    try:
        client.predict(text="你好。", mode="instruct", prompt_wav=handle_file(str(ZERO_SHOT_PROMPT)),
                       prompt_text=ZERO_SHOT_TRANSCRIPT, instruct_text="请用四川话说\n" + FORGED, seed=1,
                       speed=1.0, stream=False, normalize=True, voice="", api_name="/synthesize")
    except Exception:
        pass           # whether the lite engine speaks this instruction is not the point; its log line is
    records = assert_every_line_is_one_record(json_app)
    lines = [line for line in json_app.log_text().splitlines() if "req=instr-forge " in line]
    instruction = next(line for line in lines if "instruction:" in line)
    assert r"\n2026-01-01 00:00:00.000 | ERROR" in instruction
    assert not any(line.startswith("2026-01-01 00:00:00.000") for line in json_app.log_text().splitlines())
    messages = [r["message"] for r in records if r["request_id"] == "instr-forge"]
    assert any(r"请用四川话说\n2026-01-01" in message for message in messages), messages
    health_within_1s(json_app)


def test_control_characters_in_url_paths_of_unauthenticated_callers_are_escaped(json_app):
    evil = "x%0A" + FORGED.replace(" ", "%20").replace("|", "%7C") + "%1B%5B31m%07%00"
    deleted = httpx.delete(f"{json_app.url}/v1/audio/voices/{evil}", headers={"Authorization": "Bearer wrong"},
                           timeout=10)
    assert deleted.status_code == 401 and deleted.json()["error"]["code"] == "invalid_api_key"
    line = warning_for(json_app, deleted.headers["x-request-id"])
    assert r"x\n2026-01-01 00:00:00.000 | ERROR" in line and r"\x1b[31m\x07\x00" in line
    cross = httpx.post(f"{json_app.url}/v1/audio/{evil}", content=b"{}", timeout=10,
                       headers={"Origin": "https://evil.example", "Content-Type": "application/json"})
    assert cross.status_code == 403
    line = warning_for(json_app, cross.headers["x-request-id"])
    assert r"\x1b[31m\x07\x00" in line and "Cross-site request refused" in line
    rid, deadline = cross.headers["x-request-id"], time.time() + 10
    while True:      # the app's JSON sink has its own queue: its line may follow the text line by a moment
        records = assert_every_line_is_one_record(json_app)
        if any(r["request_id"] == rid and r"\x07\x00" in r["message"] for r in records) or time.time() > deadline:
            break
        time.sleep(0.1)
    assert any(r["request_id"] == rid and r"\x07\x00" in r["message"] for r in records)
    health_within_1s(json_app)
