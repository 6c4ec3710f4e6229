"""Saved results: outputs/output_YYYYmmdd_HHMMSS_<reqid>.wav, written whole or not at all."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import soundfile as sf

PREFIX = "output_"
PARTIAL_SUFFIX = ".partial"
STALE_PARTIAL_S = 60.0     # a WAV is written in well under a second; older partials are left by a crash


def output_path(outputs_dir: Path, request_id: str, now: datetime | None = None) -> Path:
    stamp = (now or datetime.now()).strftime("%Y%m%d_%H%M%S")
    return Path(outputs_dir) / f"{PREFIX}{stamp}_{request_id}.wav"


def write_wav_atomic(path: Path, samples: np.ndarray, sample_rate: int) -> Path:
    """Write to a hidden temporary file in the same directory, fsync, then rename over `path`.

    A crash at any point leaves either no file or the complete file, never a truncated WAV.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=PARTIAL_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            sf.write(handle, np.asarray(samples, dtype=np.float32), sample_rate, format="WAV", subtype="PCM_16")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def copy_atomic(source: Path, target: Path) -> Path:
    """Copy `source` to `target` whole or not at all (temporary name beside it, then rename)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=PARTIAL_SUFFIX, dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle, open(source, "rb") as src:
            shutil.copyfileobj(src, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target


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
