"""The runtime log a user tails: logs/runtime.log and stdout, one leveled line per request stage.

Every line carries a short request id (`req=7f3a`, or `req=-` outside a request) so that
`tail -f logs/runtime.log | grep req=7f3a` follows one request from received to SUCCESS.

The file survives what operators do to it: deleted (or its folder deleted) while we run, it is
recreated on the next line; full or read-only, lines go to stderr with one warning until it
can be written again. Logging never takes the service down.

Every line is one line: whatever a caller puts in a message or an extra field (a user's text, a URL
path, a voice name) has its control characters written as escapes (`\\n`, `\\x1b`, `\\x00` …) by a
patcher that runs for every record before any sink sees it, so no call site can forget and nobody
can forge a line. Secrets never reach the log: `masked_argv` is how a command line is shown.
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Callable, TextIO

from loguru import logger

LINE_FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <7} | req={extra[req]} | {message}"
RETRY_EVERY_S = 5.0
SECRET_FLAGS = ("--auth", "--api-key")

# What must never reach a log line raw: C0/C1 controls and DEL, Unicode line/paragraph separators and
# the bidirectional overrides that make a line read differently from what it holds.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape(text: str) -> str:
    """`text` as one printable line: control characters become `\\n`, `\\x1b`, `\\u2028` …"""
    def shown(match: re.Match) -> str:
        char = match.group()
        if char in _NAMED:
            return _NAMED[char]
        code = ord(char)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return _UNSAFE.sub(shown, text)


def _escape_value(value):
    if isinstance(value, str):
        return escape(value)
    if isinstance(value, dict):
        return {key: _escape_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_escape_value(item) for item in value]
    return value


def escape_record(record) -> None:
    """loguru patcher: the message and every extra field made safe for a one-line log."""
    record["message"] = escape(record["message"])
    for key, value in record["extra"].items():
        record["extra"][key] = _escape_value(value)


def masked_argv(argv: list[str]) -> list[str]:
    """A command line as it may be shown: the value of --auth and --api-key replaced by ***, and the password
    of a URL (--jobs-db postgresql://user:pass@host/db) too."""
    argv = [re.sub(r"(://[^:/@\s]+:)[^@\s]*@", r"\1***@", arg) for arg in argv]
    shown: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            shown.append("***")
            hide_next = False
        elif arg in SECRET_FLAGS:
            shown.append(arg)
            hide_next = True
        elif arg.startswith(tuple(f"{flag}=" for flag in SECRET_FLAGS)):
            shown.append(arg.split("=", 1)[0] + "=***")
        else:
            shown.append(arg)
    return shown


class ResilientLogFile:
    """A loguru sink that appends to `path`, reopening it when it is moved or deleted and rotating by size."""

    def __init__(self, path: Path, max_bytes: int = 20 * 2**20, keep: int = 10, fallback: TextIO | None = None):
        self.path = Path(path)
        self.max_bytes, self.keep = max_bytes, keep
        self.fallback = fallback or sys.stderr
        self._handle: TextIO | None = None
        self._failing_since: float | None = None
        self._last_try = 0.0
        self._lock = threading.Lock()

    def write(self, message: str) -> None:
        with self._lock:
            if self._failing_since is not None and time.monotonic() - self._last_try < RETRY_EVERY_S:
                self._to_fallback(message)
                return
            try:
                handle = self._handle
                if handle is None or self._replaced(handle):
                    handle = self._open()
                handle.write(message)
                handle.flush()
                if self._failing_since is not None:
                    self._failing_since = None
                    self._to_fallback(f"log file {self.path} is writable again; logging there\n")
                if handle.tell() > self.max_bytes:
                    self._rotate()
            except OSError as err:
                self._failed(err, message)

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._handle is not None:
            try:
                self._handle.close()
            except OSError:
                pass
            self._handle = None

    def _replaced(self, handle: TextIO) -> bool:
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return True
        mine = os.fstat(handle.fileno())
        return (on_disk.st_ino, on_disk.st_dev) != (mine.st_ino, mine.st_dev)

    def _open(self) -> TextIO:
        self._close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "a", encoding="utf-8")
        return self._handle

    def _rotate(self) -> None:
        self._close()
        for index in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        stale = self.path.with_name(f"{self.path.name}.{self.keep + 1}")
        stale.unlink(missing_ok=True)

    def _failed(self, err: OSError, message: str) -> None:
        self._last_try = time.monotonic()
        if self._failing_since is None:
            self._failing_since = self._last_try
            self._to_fallback(f"WARNING: cannot write the log file {self.path} ({err.strerror or err}); "
                              f"logging to stderr until it can be written again (free space or fix permissions)\n")
        self._close()
        self._to_fallback(message)

    def _to_fallback(self, message: str) -> None:
        try:
            self.fallback.write(message)
            self.fallback.flush()
        except (OSError, ValueError):
            pass


# Which stage a request is in, for the JSON lines (the service's job registry answers).
_stage_of: Callable[[str], str | None] = lambda request_id: None


def set_stage_lookup(lookup: Callable[[str], str | None]) -> None:
    global _stage_of
    _stage_of = lookup


def patch_record(record) -> None:
    """loguru patcher, run where the line is written: escape it, and note the request's stage now
    (the file sinks write from a queue, by when the request may have moved on)."""
    escape_record(record)
    request_id = record["extra"].get("req", "-")
    record["extra"]["stage"] = None if request_id == "-" else _stage_of(request_id)


def json_line(record) -> str:
    """One log record as one JSON object: time, level, request id, stage, message, figures."""
    request_id = record["extra"].get("req", "-")
    entry = {"time": record["time"].isoformat(timespec="milliseconds"), "level": record["level"].name,
             "request_id": None if request_id == "-" else request_id,
             "stage": record["extra"].get("stage"),
             "message": record["message"]}
    if record["extra"].get("figures"):
        entry["figures"] = record["extra"]["figures"]
    return json.dumps(entry, ensure_ascii=False, default=str) + "\n"


def setup_logging(log_dir: str | Path = "logs", level: str = "INFO", *, max_bytes: int = 20 * 2**20,
                  keep: int = 10, stdout: bool = True, json_lines: bool = False) -> Path:
    """Send our log to `<log_dir>/runtime.log` (rotated by size, `keep` old files kept) and stdout;
    with `json_lines`, also one JSON object per line to `<log_dir>/runtime.jsonl`."""
    path = Path(log_dir) / "runtime.log"
    logger.remove()
    logger.configure(extra={"req": "-"}, patcher=patch_record)
    if stdout:
        logger.add(sys.stdout, format=LINE_FORMAT, level=level, colorize=False, enqueue=False, catch=True)
    sink = ResilientLogFile(path, max_bytes=max_bytes, keep=keep)
    logger.add(sink.write, format=LINE_FORMAT, level=level, enqueue=True, catch=True)
    if json_lines:
        structured = ResilientLogFile(path.with_suffix(".jsonl"), max_bytes=max_bytes, keep=keep)
        logger.add(lambda message: structured.write(json_line(message.record)), level=level, enqueue=True,
                   catch=True)
    _keep_third_party_quiet()
    return path


def _keep_third_party_quiet() -> None:
    # Libraries (gradio, httpx, uvicorn, onnxruntime) must not flood the runtime log or change the
    # root level; their own warnings still reach stderr through the standard logging module.
    logging.getLogger().setLevel(logging.WARNING)
    for name in ("httpx", "httpcore", "gradio", "uvicorn.access", "urllib3", "asyncio", "matplotlib"):
        logging.getLogger(name).setLevel(logging.WARNING)


def request_logger(request_id: str):
    """A logger bound to one request: every line it writes is tagged `req=<id>`."""
    return logger.bind(req=request_id)


def flush() -> None:
    """Wait until queued file writes are on disk (tests read the file right after a request)."""
    logger.complete()
