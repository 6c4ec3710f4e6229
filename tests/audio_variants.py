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


# container -> (file suffix, PyAV format, codec): what browsers, phones and editors save
ENCODED = {"webm": (".webm", "webm", "libopus"), "ogg-opus": (".opus", "ogg", "libopus"),
           "m4a": (".m4a", "ipod", "aac"), "aac": (".aac", "adts", "aac")}


def encoded(tmp: Path, kind: str, rate: int = 48000) -> Path:
    """The shared prompt as a browser recording (webm/opus), a phone memo (m4a) and the like, made with PyAV."""
    import av

    suffix, container_format, codec = ENCODED[kind]
    data, orig = _prompt()
    data = librosa.resample(data, orig_sr=orig, target_sr=rate).astype(np.float32)
    path = tmp / f"recording_{kind}{suffix}"
    with av.open(str(path), mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = "mono"
        sample_format = "flt" if codec == "libopus" else "fltp"
        for start in range(0, len(data), 960):
            frame = av.AudioFrame.from_ndarray(data[start:start + 960].reshape(1, -1), format=sample_format,
                                               layout="mono")
            frame.sample_rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def long_mixed(tmp: Path) -> tuple[Path, float, float]:
    """A 42 s recording: 12 s of sparse speech (long pauses), 15 s of dense clean speech, then 15 s of
    speech clipped hard. Returns (path, start, end) of the clean dense part, the one worth keeping."""
    data, rate = _prompt()
    pause = np.zeros(int(2.5 * rate), np.float32)
    sparse = np.concatenate([data[: int(1.0 * rate)], pause] * 4)[: 12 * rate]
    sparse = np.pad(sparse, (0, 12 * rate - len(sparse)))
    dense = np.tile(data, 6)[: 15 * rate]
    clipped = np.clip(np.tile(data, 6)[: 15 * rate] * 12, -1, 1)
    path = tmp / "prompt_42s_mixed.wav"
    sf.write(path, np.concatenate([sparse, dense, clipped]), rate)
    return path, 12.0, 27.0
