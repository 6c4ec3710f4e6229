"""Saved results: outputs/output_YYYYmmdd_HHMMSS_<reqid>.wav, written whole or not at all."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path

from contextlib import contextmanager
from typing import IO, Iterator

import numpy as np
import soundfile as sf

PREFIX = "output_"
PARTIAL_SUFFIX = ".partial"
STALE_PARTIAL_S = 60.0     # a WAV is written in well under a second; older partials are left by a crash


def output_path(outputs_dir: Path, request_id: str, now: datetime | None = None) -> Path:
    stamp = (now or datetime.now()).strftime("%Y%m%d_%H%M%S")
    return Path(outputs_dir) / f"{PREFIX}{stamp}_{request_id}.wav"


@contextmanager
def atomic_file(path: Path, mode: str = "wb", *, make_parents: bool = True) -> Iterator[IO]:
    """Write `path` whole or not at all: a hidden temporary file beside it, fsync, then rename over it.

    A crash at any point leaves either no file or the complete file (plus, at worst, a `.partial`
    that start-up and the hourly sweep remove), never a truncated one.
    """
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


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
