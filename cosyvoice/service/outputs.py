"""Saved results: outputs/output_YYYYmmdd_HHMMSS_<unique>_<reqid>.wav (+ .json sidecar), written whole or not at all.

`<unique>` is made here, so two requests never share a file whatever X-Request-ID they sent;
`OutputStore` is the one writer: names, atomic writes, the free-space floor and /ready's check.
"""
from __future__ import annotations

import errno
import os
import secrets
import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path


import numpy as np
import soundfile as sf

from cosyvoice.errors import OutputsError, StorageFullError
from cosyvoice.ops.atomic import PARTIAL_SUFFIX, atomic_file

PREFIX = "output_"
STALE_PARTIAL_S = 60.0     # a WAV is written in well under a second; older partials are left by a crash


def output_path(outputs_dir: Path, request_id: str, now: datetime | None = None) -> Path:
    """A fresh name: the time, a server-made unique part, then the request id (for people and logs)."""
    stamp = (now or datetime.now()).strftime("%Y%m%d_%H%M%S")
    return Path(outputs_dir) / f"{PREFIX}{stamp}_{secrets.token_hex(4)}_{request_id}.wav"


def write_wav_atomic(path: Path, samples: np.ndarray, sample_rate: int) -> Path:
    with atomic_file(path) as handle:
        sf.write(handle, np.asarray(samples, dtype=np.float32), sample_rate, format="WAV", subtype="PCM_16")
    return Path(path)


def copy_atomic(source: Path, target: Path) -> Path:
    with atomic_file(target) as handle, open(source, "rb") as src:
        shutil.copyfileobj(src, handle)
    return Path(target)


def remove_expired(outputs_dir: Path, retention_days: float, now: float | None = None) -> list[Path]:
    """Delete saved outputs older than the retention, and partial files left by a crash."""
    return _remove(outputs_dir, now, lambda name, age: (
        (name.endswith(PARTIAL_SUFFIX) and age > STALE_PARTIAL_S)
        or (name.startswith(PREFIX) and retention_days > 0 and age > retention_days * 86400)))


def remove_stale_partials(outputs_dir: Path, now: float | None = None) -> list[Path]:
    """At start-up: partial files a killed process left behind (another instance's live write is younger)."""
    return _remove(outputs_dir, now, lambda name, age: name.endswith(PARTIAL_SUFFIX) and age > STALE_PARTIAL_S)


def _remove(outputs_dir: Path, now: float | None, doomed) -> list[Path]:
    outputs_dir = Path(outputs_dir)
    if not outputs_dir.is_dir():
        return []
    now = time.time() if now is None else now
    removed = []
    for path in outputs_dir.iterdir():
        try:
            if path.is_file() and doomed(path.name, now - path.stat().st_mtime):
                path.unlink(missing_ok=True)
                removed.append(path)
        except OSError:
            continue
    return removed


def disk_advice(err: OSError) -> str:
    """Plain words for the disk errors an operator can fix."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full. Free some space there."
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "permission denied (or a read-only disk). Fix the folder's permissions or choose another --outputs-dir."
    if err.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        return "it is not a folder. Remove what is in its place or choose another --outputs-dir."
    return f"{err.strerror or err}. Check the folder, or choose another --outputs-dir."


class OutputStore:
    """outputs/: unique names, atomic WAV + sidecar, the free-space floor, and the check /ready uses."""

    def __init__(self, folder: Path, min_free_mb: float = 0.0, retention_days: float = 7.0):
        self.folder, self.min_free_mb, self.retention_days = Path(folder), float(min_free_mb), retention_days
        self._checked: tuple[float, str | None] = (0.0, None)

    def free_mb(self) -> float:
        return shutil.disk_usage(self.folder).free / 2**20

    def check_space(self) -> None:
        """StorageFullError when outputs/ is under the free-space floor (checked before any work is done)."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            free = self.free_mb()
        except OSError as err:
            raise self._error(err) from err
        if free < self.min_free_mb:
            raise StorageFullError(f"The result could not be saved: {self.folder} has {free:.0f} MB free, under "
                                   f"the server's floor of {self.min_free_mb:g} MB (--min-free-mb). Free some "
                                   f"space there; the server keeps running.")

    def save(self, request_id: str, samples: np.ndarray, sample_rate: int, record: dict, log) -> Path:
        """The WAV, whole, then its sidecar (a failed sidecar costs the history entry, never the result)."""
        from cosyvoice.service.history import write_sidecar

        self.check_space()
        try:
            path = write_wav_atomic(output_path(self.folder, request_id), samples, sample_rate)
        except OSError as err:
            self._checked = (0.0, None)           # let /ready look again now
            raise self._error(err) from err
        try:
            write_sidecar(path, record)
        except OSError as err:
            log.warning(f"result saved, but its history entry could not be written: {err}")
        self._checked = (time.monotonic(), None)
        return path

    def problem(self, max_age_s: float = 2.0) -> str | None:
        """Why results cannot be saved now (None when they can): a real write, and free space over the floor."""
        checked_at, problem = self._checked
        if time.monotonic() - checked_at < max_age_s:
            return problem
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.folder, prefix=".ready.", suffix=PARTIAL_SUFFIX) as probe:
                probe.write(b"\0" * 4096)
                probe.flush()
                os.fsync(probe.fileno())
            free = self.free_mb()
            problem = None if free >= self.min_free_mb else \
                f"{self.folder} has {free:.0f} MB free, under the --min-free-mb floor of {self.min_free_mb:g} MB"
        except OSError as err:
            problem = f"cannot write to {self.folder}: {disk_advice(err)}"
        self._checked = (time.monotonic(), problem)
        return problem

    def record(self, stem: str) -> dict | None:
        """The sidecar of a saved result by its file stem (None when gone or unreadable)."""
        import json

        try:
            record = json.loads((self.folder / f"{Path(stem).name}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def clean_expired(self) -> list[Path]:
        return remove_expired(self.folder, self.retention_days)

    def remove_stale_partials(self) -> list[Path]:
        return remove_stale_partials(self.folder)

    def _error(self, err: OSError) -> OutputsError:
        kind = StorageFullError if err.errno in (errno.ENOSPC, errno.EDQUOT) else OutputsError
        return kind(f"The result could not be saved: cannot write to {self.folder}: {disk_advice(err)} "
                    f"The server keeps running; the next request works once this is fixed.")
