"""Saved results: outputs/output_YYYYmmdd_HHMMSS_<reqid>.wav, written whole or not at all."""
from __future__ import annotations

import os
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import soundfile as sf

PREFIX = "output_"


def output_path(outputs_dir: Path, request_id: str, now: datetime | None = None) -> Path:
    stamp = (now or datetime.now()).strftime("%Y%m%d_%H%M%S")
    return Path(outputs_dir) / f"{PREFIX}{stamp}_{request_id}.wav"


def write_wav_atomic(path: Path, samples: np.ndarray, sample_rate: int) -> Path:
    """Write to a hidden temporary file in the same directory, fsync, then rename over `path`.

    A crash at any point leaves either no file or the complete file, never a truncated WAV.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".partial", dir=path.parent)
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


def remove_expired(outputs_dir: Path, retention_days: float, now: float | None = None) -> list[Path]:
    """Delete saved outputs older than the retention, and partial files left by a crash."""
    outputs_dir = Path(outputs_dir)
    if not outputs_dir.is_dir():
        return []
    now = time.time() if now is None else now
    removed = []
    for path in outputs_dir.iterdir():
        if not path.is_file():
            continue
        age = now - path.stat().st_mtime
        stale_partial = path.name.endswith(".partial") and age > 3600
        expired = path.name.startswith(PREFIX) and retention_days > 0 and age > retention_days * 86400
        if stale_partial or expired:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
