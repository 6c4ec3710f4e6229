"""Prompt files in the shapes users really upload, made from the shared human recording."""
from __future__ import annotations

from pathlib import Path

import librosa
import numpy as np
import soundfile as sf

from conftest import ZERO_SHOT_PROMPT


def _prompt() -> tuple[np.ndarray, int]:
    data, rate = sf.read(ZERO_SHOT_PROMPT, dtype="float32")
    return data, rate


def cut(tmp: Path, seconds: float) -> Path:
    data, rate = _prompt()
    path = tmp / f"prompt_{seconds:g}s.wav"
    start = int(0.5 * rate)
    sf.write(path, data[start:start + int(seconds * rate)], rate)
    return path


def long(tmp: Path, seconds: float) -> Path:
    data, rate = _prompt()
    reps = int(np.ceil(seconds * rate / len(data)))
    path = tmp / f"prompt_{seconds:g}s_long.wav"
    sf.write(path, np.tile(data, reps)[: int(seconds * rate)], rate)
    return path


def resampled(tmp: Path, rate: int, channels: int = 1, fmt: str = "wav") -> Path:
    data, orig = _prompt()
    data = librosa.resample(data, orig_sr=orig, target_sr=rate)
    if channels > 1:
        data = np.stack([data * (1 - 0.05 * c) for c in range(channels)], axis=1)
    path = tmp / f"prompt_{rate}_{channels}ch.{fmt}"
    if fmt == "mp3":
        sf.write(path, data, rate, format="MP3")
    else:
        sf.write(path, data, rate)
    return path


def not_audio(tmp: Path) -> Path:
    path = tmp / "notes.wav"
    path.write_text("这不是音频 this is a text file renamed to .wav\n" * 20, encoding="utf-8")
    return path
