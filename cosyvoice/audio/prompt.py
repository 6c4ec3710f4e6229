"""Prompt audio: decode any common format, check it, mix to mono and trim silence.

Recordings as people have them are taken, with a notice instead of a refusal: 8–16 kHz audio
(phones, headsets) is upsampled to 16 kHz; anything with more than BEST_MAX_SECONDS of sound is cut
to its best 3–15 s window (most speech, fewest pauses, no clipping) and the kept span is named.

Every refusal is a UserInputError whose message names the problem and what to do about it.
"""
from __future__ import annotations

import hashlib
import io
import math
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from cosyvoice.engines.base import PromptAudio
from cosyvoice.errors import UserInputError
from cosyvoice.settings import MAX_FILE_BYTES

MIN_SAMPLE_RATE = 16000              # below this a recording is upsampled to it, with a notice
LOWEST_SAMPLE_RATE = 8000            # telephone audio; below this there is too little voice left
MIN_SECONDS, MAX_SECONDS = 2.0, 30.0
BEST_MIN_SECONDS, BEST_MAX_SECONDS = 3.0, 15.0
SILENCE_DB = 40.0          # frames this far below the loudest frame count as silence
EDGE_KEEP_SECONDS = 0.15   # keep a little room at both ends so onsets are not clipped
MAX_DECODED_SECONDS = 120.0         # decoded length, before trimming: a tiny file can hold hours of silence
MAX_CHANNELS = 8
MAX_DECODE_WALL_S = 15.0            # a file that takes longer than this to decode is not a 30 s clip
STEADY_PEAK_SHARE = 0.6             # more frames than this with one strongest bin: a tone, not speech
SUPPORTED = ".wav .mp3 .flac .ogg .opus .m4a .aac .webm"
PROMPT_SUFFIXES = tuple(SUPPORTED.split())    # what the upload boxes offer
UNUSABLE = "Prompt audio could not be used. Upload the recording again (" + SUPPORTED + ")."


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
        trim = rate = ""
        if self.original_seconds - self.trimmed_seconds > 0.05:
            trim = f", trimmed {self.original_seconds:.2f} s → {self.trimmed_seconds:.2f} s"
        if self.audio.sample_rate != self.original_rate:
            rate = f" upsampled to {self.audio.sample_rate} Hz"
        return f"{self.trimmed_seconds:.2f} s, {self.original_rate} Hz{rate}, {channels}{trim}"


def _open_regular_file(path: str | Path) -> int:
    """Open `path` for reading only if it is a plain file reached without a symbolic link.

    Devices, FIFOs, directories, links and missing files all get the same message, so a client
    cannot learn which server paths exist.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except (OSError, ValueError, TypeError):
        raise UserInputError(UNUSABLE) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UserInputError(UNUSABLE)
    return fd


def decode_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """(samples (N, C) float32, sample_rate) from any format soundfile or PyAV can read, within the limits."""
    name = Path(path).name
    fd = _open_regular_file(path)
    with os.fdopen(fd, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            raise UserInputError(f"Prompt audio '{name}' is an empty file. Upload a real recording ({SUPPORTED}).")
        if size > MAX_FILE_BYTES:
            raise UserInputError(f"Prompt audio '{name}' is {size / 2**20:.0f} MB; the limit is "
                                 f"{MAX_FILE_BYTES // 2**20} MB. Upload a 3–15 s clip.")
        try:
            info = sf.info(handle)
        except Exception:
            info = None
        if info is not None:
            _check_layout(name, info.channels, info.frames / max(info.samplerate, 1))
            handle.seek(0)
            data, rate = sf.read(handle, dtype="float32", always_2d=True)
            return data, int(rate)
        handle.seek(0)
        try:
            return _decode_with_av(handle, name)
        except UserInputError:
            raise
        except Exception as err:
            raise UserInputError(
                f"Prompt audio '{name}' could not be read as audio ({type(err).__name__}). "
                f"Is it really a sound file? Supported: {SUPPORTED}.") from err


def _check_layout(name: str, channels: int, seconds: float) -> None:
    if not 1 <= channels <= MAX_CHANNELS:
        raise UserInputError(f"Prompt audio '{name}' says it has {channels} channels; at most {MAX_CHANNELS} "
                             f"are accepted. Export it as mono or stereo.")
    if seconds > MAX_DECODED_SECONDS:
        raise UserInputError(f"Prompt audio '{name}' is {seconds:.0f} s long; at most {MAX_DECODED_SECONDS:.0f} s "
                             f"are read. Cut a 3–15 s clip of clean speech.")


def _decode_with_av(handle, name: str) -> tuple[np.ndarray, int]:
    import av  # optional at import time: only formats soundfile cannot read need it

    started = time.monotonic()
    with av.open(handle) as container:
        stream = next(s for s in container.streams if s.type == "audio")
        rate = stream.codec_context.sample_rate
        channels = stream.codec_context.channels
        _check_layout(name, channels, 0.0)
        frames, total = [], 0
        for frame in container.decode(stream):
            array = frame.to_ndarray()
            if array.dtype.kind in "iu":
                array = array.astype(np.float32) / float(np.iinfo(array.dtype).max)
            if frame.format.is_planar:
                array = array.reshape(channels, -1).T       # (C, N) planes -> (N, C)
            else:
                array = array.reshape(-1, channels)         # interleaved -> (N, C)
            frames.append(array.astype(np.float32))
            total += len(array)
            # Checked while decoding: the container's own duration can lie.
            _check_layout(name, channels, total / max(rate, 1))
            if time.monotonic() - started > MAX_DECODE_WALL_S:
                raise UserInputError(f"Prompt audio '{name}' took too long to decode. Upload a 3–15 s clip "
                                     f"as WAV, FLAC or MP3.")
    if not frames:
        raise ValueError("no audio frames")
    return np.concatenate(frames, axis=0), int(rate)


def steady_peak_share(mono: np.ndarray, rate: int) -> float:
    """Share of the audible 40 ms frames whose strongest frequency bin is the most common one.

    Speech moves its peak with pitch and vowels (0.08–0.15 on our recordings); a steady tone or
    mains hum keeps it in one bin (1.0).
    """
    frame = max(64, rate // 25)
    n_frames = len(mono) // frame
    if n_frames < 1:
        return 0.0
    frames = mono[: n_frames * frame].reshape(n_frames, frame) * np.hanning(frame)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    total = power.sum(axis=1)
    peaks = power[total > total.max() * 1e-3].argmax(axis=1)
    return float(np.bincount(peaks).max() / len(peaks))


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


def best_window(mono: np.ndarray, rate: int, seconds: float = BEST_MAX_SECONDS) -> tuple[int, int]:
    """(start, end) sample indices of the `seconds` stretch with the most speech: most frames within
    SILENCE_DB of the loudest, clipped frames counted heavily against; edges moved to the quietest
    frame nearby so no word is cut in half."""
    frame = max(1, rate // 50)
    n_frames = len(mono) // frame
    span = int(seconds * rate) // frame
    if n_frames <= span:
        return 0, len(mono)
    frames = mono[: n_frames * frame].reshape(n_frames, frame)
    rms = np.sqrt(np.mean(frames ** 2, axis=1) + 1e-12)
    voiced = (20 * np.log10(rms / rms.max()) > -SILENCE_DB + 10).astype(np.float64)
    clipped = (np.abs(frames) >= 0.999).any(axis=1).astype(np.float64)
    score = np.concatenate([[0.0], np.cumsum(voiced - 5.0 * clipped)])
    totals = score[span:] - score[:-span]               # window starting at each frame
    start = int(np.argmax(totals))
    reach = max(1, int(0.25 * rate) // frame)           # look this far inside each edge for a pause
    start += int(np.argmin(rms[start:start + reach]))
    end = start + span - reach + int(np.argmin(rms[start + span - reach:start + span]))
    end = min(end + 1, n_frames)
    return start * frame, end * frame


def _raise_rate(name: str, mono: np.ndarray, rate: int, warnings: list[str]) -> tuple[np.ndarray, int]:
    """Telephone-band audio upsampled to MIN_SAMPLE_RATE (with a notice); below LOWEST_SAMPLE_RATE refused."""
    if rate >= MIN_SAMPLE_RATE:
        return mono, rate
    if rate < LOWEST_SAMPLE_RATE:
        raise UserInputError(f"Prompt audio '{name}' is sampled at {rate} Hz; at least {LOWEST_SAMPLE_RATE} Hz "
                             f"is needed (16 kHz or more is best). Record or export it at 16 kHz or higher.")
    from scipy.signal import resample_poly     # only here: the engine alone (bench/gpu_check.sh) needs no scipy

    divisor = math.gcd(MIN_SAMPLE_RATE, rate)
    mono = resample_poly(mono, MIN_SAMPLE_RATE // divisor, rate // divisor).astype(np.float32)
    warnings.append(f"Prompt audio is sampled at {rate} Hz (telephone quality); it was upsampled to "
                    f"{MIN_SAMPLE_RATE} Hz, but the cloned voice will sound duller than from a 16 kHz+ recording.")
    return mono, MIN_SAMPLE_RATE


def _cut_to_best(mono: np.ndarray, rate: int, sound_seconds: float, warnings: list[str]) -> np.ndarray:
    """A recording with over BEST_MAX_SECONDS of sound keeps its best window, and says which."""
    start, end = best_window(mono, rate)
    warnings.append(f"Prompt audio has {sound_seconds:.1f} s of sound; a voice clones best from "
                    f"{BEST_MIN_SECONDS:.0f}–{BEST_MAX_SECONDS:.0f} s, so the best "
                    f"{(end - start) / rate:.1f} s were kept ({start / rate:.1f}–{end / rate:.1f} s into the "
                    f"recording). The transcript must say exactly what is spoken in that part.")
    return trim_silence(mono[start:end], rate)


def load_prompt_audio(path: str | Path) -> LoadedPrompt:
    """Decode, check and prepare a prompt recording; raises UserInputError with a plain message."""
    name = Path(path).name
    data, original_rate = decode_audio(path)
    if data.size == 0:
        raise UserInputError(f"Prompt audio '{name}' contains no samples.")
    channels = data.shape[1]
    mono = data.mean(axis=1) if channels > 1 else data[:, 0]
    mono = np.nan_to_num(mono.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    mono = mono - np.float32(mono.mean())          # a DC offset is not sound
    original_seconds = len(mono) / original_rate
    warnings: list[str] = []
    mono, rate = _raise_rate(name, mono, original_rate, warnings)
    peak = float(np.abs(mono).max())
    if peak < 1e-4:
        raise UserInputError(f"Prompt audio '{name}' is silent. Upload a recording of someone speaking.")
    if steady_peak_share(mono, rate) > STEADY_PEAK_SHARE:
        raise UserInputError(f"Prompt audio '{name}' is a steady tone or hum, not speech. Upload a recording "
                             f"of someone speaking.")
    trimmed = trim_silence(mono, rate)
    if len(trimmed) / rate > BEST_MAX_SECONDS + 0.05:
        trimmed = _cut_to_best(mono, rate, len(trimmed) / rate, warnings)
    seconds = len(trimmed) / rate
    if seconds < MIN_SECONDS:
        raise UserInputError(f"Prompt audio '{name}' has only {seconds:.1f} s of sound (at least {MIN_SECONDS:.0f} s "
                             f"needed; 3–15 s of clean speech works best).")
    if seconds < BEST_MIN_SECONDS or seconds > BEST_MAX_SECONDS + 0.05:
        warnings.append(f"Prompt audio is {seconds:.1f} s; 3–15 s of clean speech works best.")
    if np.mean(np.abs(trimmed) > 0.999) > 0.001:
        warnings.append("Prompt audio is clipped (distorted); a cleaner recording clones better.")
    return LoadedPrompt(prompt_from_samples(trimmed, rate), original_rate, channels, original_seconds, seconds,
                        warnings)


def prompt_from_samples(mono: np.ndarray, rate: int) -> PromptAudio:
    mono = np.ascontiguousarray(mono, dtype=np.float32)
    return PromptAudio(mono, rate, hashlib.sha1(mono.tobytes() + str(rate).encode()).hexdigest())


def recording_as_wav(path: str | Path) -> bytes:
    """An uploaded recording (webm, m4a, …) as WAV bytes, for players that know only a few formats;
    the limits of `decode_audio` apply. Float samples, so a hot recording is not clipped on the way."""
    data, rate = decode_audio(path)
    buffer = io.BytesIO()
    sf.write(buffer, data, rate, format="WAV", subtype="FLOAT")
    return buffer.getvalue()
