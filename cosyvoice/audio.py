"""Prompt audio: decode any common format, check it, mix to mono and trim silence.

Every refusal is a UserInputError whose message names the problem and what to do about it.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from .engines.base import PromptAudio
from .errors import UserInputError

MIN_SAMPLE_RATE = 16000
MIN_SECONDS, MAX_SECONDS = 2.0, 30.0
BEST_MIN_SECONDS, BEST_MAX_SECONDS = 3.0, 15.0
SILENCE_DB = 40.0          # frames this far below the loudest frame count as silence
EDGE_KEEP_SECONDS = 0.15   # keep a little room at both ends so onsets are not clipped
MAX_FILE_BYTES = 100 * 1024 * 1024
SUPPORTED = ".wav .mp3 .flac .ogg .opus .m4a .aac .webm"


@dataclass
class LoadedPrompt:
    audio: PromptAudio
    original_rate: int
    original_channels: int
    original_seconds: float
    trimmed_seconds: float
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> str:
        channels = "mono" if self.original_channels == 1 else f"{self.original_channels} ch mixed to mono"
        trim = ""
        if self.original_seconds - self.trimmed_seconds > 0.05:
            trim = f", silence trimmed {self.original_seconds:.2f} s → {self.trimmed_seconds:.2f} s"
        return f"{self.trimmed_seconds:.2f} s, {self.original_rate} Hz, {channels}{trim}"


def decode_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """(samples (N, C) float32, sample_rate) from any format soundfile or PyAV can read."""
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise UserInputError(f"Prompt audio '{name}' was not found. Upload the recording again.")
    size = path.stat().st_size
    if size == 0:
        raise UserInputError(f"Prompt audio '{name}' is an empty file. Upload a real recording ({SUPPORTED}).")
    if size > MAX_FILE_BYTES:
        raise UserInputError(f"Prompt audio '{name}' is {size / 2**20:.0f} MB; the limit is "
                             f"{MAX_FILE_BYTES // 2**20} MB. Upload a 3–15 s clip.")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
        return data, int(rate)
    except Exception:
        pass
    try:
        return _decode_with_av(path)
    except Exception as err:
        raise UserInputError(
            f"Prompt audio '{name}' could not be read as audio ({type(err).__name__}). "
            f"Is it really a sound file? Supported: {SUPPORTED}.") from err


def _decode_with_av(path: Path) -> tuple[np.ndarray, int]:
    import av  # optional at import time: only formats soundfile cannot read need it

    with av.open(str(path)) as container:
        stream = next(s for s in container.streams if s.type == "audio")
        rate = stream.codec_context.sample_rate
        channels = stream.codec_context.channels
        frames = []
        for frame in container.decode(stream):
            array = frame.to_ndarray()
            if array.dtype.kind in "iu":
                array = array.astype(np.float32) / float(np.iinfo(array.dtype).max)
            if frame.format.is_planar:
                array = array.reshape(channels, -1).T       # (C, N) planes -> (N, C)
            else:
                array = array.reshape(-1, channels)         # interleaved -> (N, C)
            frames.append(array.astype(np.float32))
    if not frames:
        raise ValueError("no audio frames")
    return np.concatenate(frames, axis=0), int(rate)


def trim_silence(mono: np.ndarray, rate: int) -> np.ndarray:
    """Cut leading and trailing stretches quieter than SILENCE_DB below the loudest 20 ms frame."""
    frame = max(1, rate // 50)
    n_frames = len(mono) // frame
    if n_frames < 2:
        return mono
    rms = np.sqrt(np.mean(mono[: n_frames * frame].reshape(n_frames, frame) ** 2, axis=1) + 1e-12)
    level = 20 * np.log10(rms / rms.max())
    voiced = np.flatnonzero(level > -SILENCE_DB)
    keep = int(EDGE_KEEP_SECONDS * rate)
    start = max(0, voiced[0] * frame - keep)
    end = min(len(mono), (voiced[-1] + 1) * frame + keep)
    return mono[start:end]


def load_prompt_audio(path: str | Path) -> LoadedPrompt:
    """Decode, check and prepare a prompt recording; raises UserInputError with a plain message."""
    name = Path(path).name
    data, rate = decode_audio(path)
    if rate < MIN_SAMPLE_RATE:
        raise UserInputError(f"Prompt audio '{name}' is sampled at {rate} Hz; at least {MIN_SAMPLE_RATE} Hz "
                             f"is needed for cloning. Record or export it at 16 kHz or higher.")
    if data.size == 0:
        raise UserInputError(f"Prompt audio '{name}' contains no samples.")
    channels = data.shape[1]
    mono = data.mean(axis=1) if channels > 1 else data[:, 0]
    mono = np.nan_to_num(mono.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    original_seconds = len(mono) / rate
    peak = float(np.abs(mono).max())
    if peak < 1e-4:
        raise UserInputError(f"Prompt audio '{name}' is silent. Upload a recording of someone speaking.")
    trimmed = trim_silence(mono, rate)
    seconds = len(trimmed) / rate
    if seconds < MIN_SECONDS:
        raise UserInputError(f"Prompt audio '{name}' has only {seconds:.1f} s of sound (at least {MIN_SECONDS:.0f} s "
                             f"needed; 3–15 s of clean speech works best).")
    if seconds > MAX_SECONDS:
        raise UserInputError(f"Prompt audio '{name}' is {seconds:.1f} s long; the limit is {MAX_SECONDS:.0f} s. "
                             f"Cut a 3–15 s stretch of clean speech.")
    warnings = []
    if seconds < BEST_MIN_SECONDS or seconds > BEST_MAX_SECONDS:
        warnings.append(f"Prompt audio is {seconds:.1f} s; 3–15 s of clean speech works best.")
    if np.mean(np.abs(trimmed) > 0.999) > 0.001:
        warnings.append("Prompt audio is clipped (distorted); a cleaner recording clones better.")
    sha1 = hashlib.sha1(trimmed.tobytes() + str(rate).encode()).hexdigest()
    return LoadedPrompt(PromptAudio(trimmed, rate, sha1), rate, channels, original_seconds, seconds, warnings)
