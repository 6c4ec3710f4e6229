"""Mastering: the last stage every engine's audio passes, so no output ever clips.

`Limiter` is a look-ahead peak limiter that works on chunks and keeps its state between them, so a
streamed response and the saved file are the same samples, wherever the chunk joins fall:

- the level it limits is the true peak (the signal 4x oversampled), so lossy encoders and DACs that
  rebuild the waveform between samples stay under the ceiling too;
- gain falls ahead of a peak over `LOOKAHEAD_S` (a smooth ramp, no step) and recovers at
  `RELEASE_DB_PER_S`, so loud syllables are turned down without the crackle of clipping;
- it looks `latency` samples ahead, so the first call hands out that many fewer samples than it got
  and `flush` hands out the rest: the sum of outputs lines up sample for sample with the input.

`master_events` wraps the service's stream of events: chunks go through one limiter per request.
With a loudness target (BS.1770 integrated loudness, pyloudnorm) a gain is applied before the limiter:
for a request that is not streamed it is measured on the whole result, for a streamed one on its first
`LOUDNESS_WINDOW_S` seconds, then held, so streamed chunks never change level against each other.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
from scipy.ndimage import maximum_filter1d
from scipy.signal import lfilter

CEILING_DB = -1.0             # true-peak ceiling, dBFS; leaves room for mp3/aac encoder overshoot
LOOKAHEAD_S = 0.005           # gain reaches its floor by the peak, ramping down over this long
RELEASE_DB_PER_S = 40.0       # how fast the gain comes back after a peak
OVERSAMPLE = 4                # true-peak estimate: the waveform between samples, 4 points per sample
_HALF_TAPS = 8                # interpolation filter reaches this many samples either side
LOUDNESS_WINDOW_S = 3.0       # a streamed request sets its loudness gain from this much audio
_MAX_GAIN_DB = 24.0           # a loudness target never lifts near-silence by more than this


def _interpolators() -> np.ndarray:
    """(OVERSAMPLE-1, 2*_HALF_TAPS) windowed-sinc filters for the points between two samples."""
    taps = np.arange(-_HALF_TAPS + 1, _HALF_TAPS + 1)
    rows = []
    for phase in range(1, OVERSAMPLE):
        offset = taps - phase / OVERSAMPLE
        kernel = np.sinc(offset) * np.kaiser(len(taps), 6.0)
        rows.append(kernel / kernel.sum())
    return np.array(rows)


_FILTERS = _interpolators()


def db_to_gain(db: float) -> float:
    return float(10.0 ** (db / 20.0))


class Limiter:
    """Chunked true-peak limiter; `process(a) + process(b) + flush()` equals `process(a + b) + flush()`."""

    def __init__(self, sample_rate: int, ceiling_db: float = CEILING_DB, gain_db: float = 0.0):
        self.rate = int(sample_rate)
        self.ceiling = db_to_gain(ceiling_db)
        self.gain_db = float(gain_db)
        self.window = max(1, round(LOOKAHEAD_S * self.rate))
        self.release = RELEASE_DB_PER_S / self.rate             # dB per sample
        self.latency = self.window + _HALF_TAPS                 # output lags input by this many samples
        taps = _FILTERS.shape[1]
        self._history = np.zeros(taps - 1)                      # last input samples, for interpolation
        self._need = np.zeros(self.window)                      # attenuation needed, last `window` values
        self._held = np.zeros(self.window)                      # released attenuation, last `window` values
        self._last_held = 0.0
        self._delay = np.zeros(self.latency)                    # input samples not yet sent out
        self._to_skip = self.latency                            # the delay line's initial zeros

    def process(self, chunk: np.ndarray) -> np.ndarray:
        x = np.asarray(chunk, dtype=np.float64).reshape(-1) * db_to_gain(self.gain_db)
        if x.size == 0:
            return np.zeros(0, np.float32)
        need = self._needed_attenuation(x)
        held = self._hold_and_release(need)
        smooth_in = np.concatenate([self._held, held])
        self._held = smooth_in[-self.window:]
        # mean of the released attenuation over window+1 values ending here: never below what the
        # sample now leaving the delay line needs, and a ramp instead of a step
        cumulative = np.concatenate([[0.0], np.cumsum(smooth_in)])
        ends = np.arange(self.window, len(smooth_in)) + 1
        attenuation = (cumulative[ends] - cumulative[ends - self.window - 1]) / (self.window + 1)
        delayed = np.concatenate([self._delay, x])
        out, self._delay = delayed[: x.size], delayed[x.size:]
        y = np.clip(out * 10.0 ** (-attenuation / 20.0), -self.ceiling, self.ceiling).astype(np.float32)
        skipped = min(self._to_skip, y.size)
        self._to_skip -= skipped
        return y[skipped:]

    def flush(self) -> np.ndarray:
        """The input samples still held back (pushed out with silence); the limiter is spent after this."""
        held_back = self.latency - self._to_skip
        return self.process(np.zeros(self.latency))[:held_back]

    def _needed_attenuation(self, x: np.ndarray) -> np.ndarray:
        """dB each input sample must come down by: its true peak (sample or in-between points) over the
        ceiling. Value i belongs to the sample `_HALF_TAPS` before the newest one (the filter's delay)."""
        extended = np.concatenate([self._history, x])
        self._history = extended[-(len(self._history)):]
        frames = np.lib.stride_tricks.sliding_window_view(extended, _FILTERS.shape[1])
        between = np.abs(frames @ _FILTERS.T).max(axis=1)                 # points after sample i
        here = np.abs(frames[:, _HALF_TAPS - 1])                         # sample i itself
        peak = np.maximum(here, between)
        return np.maximum(0.0, 20.0 * np.log10(np.maximum(peak, 1e-12) / self.ceiling))

    def _hold_and_release(self, need: np.ndarray) -> np.ndarray:
        """Max of the need over the look-ahead window, then let go at most `release` dB per sample."""
        extended = np.concatenate([self._need, need])
        self._need = extended[-self.window:]
        hold = maximum_filter1d(extended, size=self.window + 1, origin=self.window // 2)[self.window:]
        # held[n] = max(hold[n], held[n-1] - release): a running maximum of hold[k] + k*release
        steps = np.arange(1, hold.size + 1) * self.release
        carried = self._last_held
        held = np.maximum(np.maximum.accumulate(hold + steps), carried) - steps
        held = np.maximum(held, hold)
        self._last_held = float(held[-1])
        return held


def integrated_loudness(samples: np.ndarray, sample_rate: int) -> float:
    """BS.1770 integrated loudness in LUFS (-inf for silence or less than 0.4 s)."""
    import pyloudnorm

    x = np.asarray(samples, dtype=np.float64).reshape(-1)
    if x.size < int(0.4 * sample_rate) + 1:
        return float("-inf")
    return float(pyloudnorm.Meter(sample_rate).integrated_loudness(x))


def loudness_gain_db(samples: np.ndarray, sample_rate: int, target_lufs: float) -> float:
    level = integrated_loudness(samples, sample_rate)
    if not np.isfinite(level):
        return 0.0
    return float(min(target_lufs - level, _MAX_GAIN_DB))


def master(samples: np.ndarray, sample_rate: int, target_lufs: float | None = None,
           ceiling_db: float = CEILING_DB) -> np.ndarray:
    """A whole clip, limited (and brought to `target_lufs` when given); same length as the input.

    With a target the gain is corrected once after limiting, since limiting lowers loudness."""
    gain = 0.0 if target_lufs is None else loudness_gain_db(samples, sample_rate, target_lufs)
    out = _limit_all(samples, sample_rate, gain, ceiling_db)
    if target_lufs is not None:
        correction = loudness_gain_db(out, sample_rate, target_lufs)
        if abs(correction) > 0.2:
            out = _limit_all(samples, sample_rate, min(gain + correction, _MAX_GAIN_DB), ceiling_db)
    return out


def _limit_all(samples: np.ndarray, sample_rate: int, gain_db: float, ceiling_db: float) -> np.ndarray:
    limiter = Limiter(sample_rate, ceiling_db, gain_db)
    return np.concatenate([limiter.process(samples), limiter.flush()])


def master_events(events: Iterator, sample_rate: int, stream: bool, target_lufs: float | None = None,
                  ceiling_db: float = CEILING_DB) -> Iterator:
    """The service's events with every audio chunk mastered; other events pass through in order.

    A chunk's last few ms come out with the next chunk (look-ahead); the last chunk carries the tail.
    Without a loudness target, streamed and not streamed give the same samples."""
    if target_lufs is not None and not stream:
        yield from _master_whole(events, sample_rate, target_lufs, ceiling_db)
        return
    limiter, waiting, make = None, [], None
    for event in events:
        if event.chunk is None:
            yield event
            continue
        make = type(event)
        waiting.append(np.asarray(event.chunk, dtype=np.float32).reshape(-1))
        if limiter is None:
            if target_lufs is not None and sum(map(len, waiting)) < LOUDNESS_WINDOW_S * sample_rate:
                continue        # the loudness gain is set once, from the first seconds
            limiter = _limiter_for(waiting, sample_rate, target_lufs, ceiling_db)
        yield make(chunk=limiter.process(np.concatenate(waiting)))
        waiting = []
    if make is None:
        return
    limiter = limiter or _limiter_for(waiting, sample_rate, target_lufs, ceiling_db)
    yield make(chunk=np.concatenate([limiter.process(np.concatenate(waiting + [np.zeros(0, np.float32)])),
                                     limiter.flush()]))


def _limiter_for(first: list[np.ndarray], sample_rate: int, target_lufs: float | None,
                 ceiling_db: float) -> Limiter:
    gain = 0.0 if target_lufs is None else loudness_gain_db(np.concatenate(first), sample_rate, target_lufs)
    return Limiter(sample_rate, ceiling_db, gain)


def _master_whole(events: Iterator, sample_rate: int, target_lufs: float, ceiling_db: float) -> Iterator:
    chunks, make = [], None
    for event in events:
        if event.chunk is None:
            yield event
            continue
        make = type(event)
        chunks.append(np.asarray(event.chunk, dtype=np.float32).reshape(-1))
    if make is not None:
        yield make(chunk=master(np.concatenate(chunks), sample_rate, target_lufs, ceiling_db))
