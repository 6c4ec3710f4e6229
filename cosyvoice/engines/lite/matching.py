"""Move espeak's voice toward a prompt voice with WORLD (pyworld).

What is matched: the log-F0 level and spread (spread ratio capped), the formant scale (a frequency
warp from the F0 ratio, clipped) and the long-term spectral envelope: per-coefficient mean and
spread of WORLD's mel-cepstral coding of the envelope over voiced frames (a smooth, low-order
correction; a cepstrally smoothed mean difference when no coded statistics exist). Frames are
never replaced by prompt frames: with 3-15 s prompts that destroys intelligibility.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.signal import resample_poly

with warnings.catch_warnings():            # pyworld imports pkg_resources (needs setuptools<81)
    warnings.simplefilter("ignore")
    import pyworld

WORLD_RATE = 22050                          # espeak's own rate: no resampling before analysis
FRAME_MS = 10.0
FFT_SIZE = 1024                             # cheaptrick's size for f0_floor 71 Hz at 22.05 kHz
F0_FLOOR, F0_CEIL = 55.0, 800.0
ENVELOPE_BAND_HZ = 7000.0                   # prompts may be 16 kHz: match the envelope below this
CEPSTRAL_ORDER = 24                         # quefrency bins kept when smoothing the correction
MAX_CORRECTION = 4.6                        # |log power| limit of the correction (20 dB)
SPREAD_RATIO_CAP = (0.5, 2.0)
WARP_EXPONENT = 0.25                        # formant scale ~ F0 ratio ** 0.25 (men vs women)
WARP_LIMITS = (0.88, 1.15)
SYNTH_DIO_SPEED = 4                         # dio decimation for espeak output (clean, no noise)
CODED_DIMS = 40                             # WORLD's mel-cepstral coding of the envelope
SPECTRAL_SPREAD_CAP = (0.5, 2.0)            # how far per-coefficient spread may be rescaled


@dataclass
class Analysis:
    f0: np.ndarray                          # (frames,) Hz, 0 = unvoiced
    envelope: np.ndarray                    # (frames, FFT_SIZE//2+1) power spectral envelope
    aperiodicity: np.ndarray | None         # (frames, FFT_SIZE//2+1); None when not asked for


@dataclass
class VoiceStats:
    """Long-term statistics of a voice: all the matching needs from a prompt (or a base voice)."""
    log_f0_median: float
    log_f0_spread: float                    # half the 16-84 percentile range of log-F0
    voiced_frames: int
    mean_log_envelope: np.ndarray           # (FFT_SIZE//2+1,) over voiced frames
    rms: float
    coded_mean: np.ndarray | None = None    # (CODED_DIMS,) over voiced frames
    coded_std: np.ndarray | None = None
    voiced_envelopes: np.ndarray | None = None   # a subsample, kept for base voices only

    @property
    def median_f0(self) -> float:
        return float(np.exp(self.log_f0_median))


def to_rate(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target:
        return samples.astype(np.float64)
    g = np.gcd(int(rate), int(target))
    return resample_poly(samples.astype(np.float64), target // g, rate // g)


def analyse(x: np.ndarray, with_aperiodicity: bool = True, dio_speed: int = 1) -> Analysis:
    """WORLD analysis at WORLD_RATE with the fast dio tracker refined by stonemask.

    dio_speed > 1 lets dio decimate internally: fine for espeak's clean output, not for prompts.
    """
    x = np.ascontiguousarray(x, dtype=np.float64)
    f0, times = pyworld.dio(x, WORLD_RATE, f0_floor=F0_FLOOR, f0_ceil=F0_CEIL, frame_period=FRAME_MS,
                            speed=dio_speed)
    f0 = pyworld.stonemask(x, f0, times, WORLD_RATE)
    envelope = pyworld.cheaptrick(x, f0, times, WORLD_RATE, fft_size=FFT_SIZE)
    aperiodicity = pyworld.d4c(x, f0, times, WORLD_RATE, fft_size=FFT_SIZE) if with_aperiodicity else None
    return Analysis(f0, envelope, aperiodicity)


def voice_stats(x: np.ndarray, analysis: Analysis | None = None) -> VoiceStats:
    a = analysis or analyse(x, with_aperiodicity=False)
    voiced = a.f0 > 0
    if voiced.sum() < 10:
        raise ValueError("too little voiced speech to measure a voice")
    log_f0 = np.log(a.f0[voiced])
    lo, med, hi = np.percentile(log_f0, [16, 50, 84])
    log_env = np.log(a.envelope[voiced] + 1e-12)
    # weight frames by loudness so that quiet, noisy frames count less
    energy = np.exp(log_env).mean(axis=1)
    weights = np.sqrt(energy / energy.max())
    mean_env = (log_env * weights[:, None]).sum(axis=0) / weights.sum()
    coded = code(a.envelope[voiced])
    stride = max(1, int(voiced.sum()) // 600)
    return VoiceStats(float(med), float(max((hi - lo) / 2, 1e-3)), int(voiced.sum()), mean_env,
                      float(np.sqrt(np.mean(x ** 2))), coded.mean(axis=0), coded.std(axis=0) + 1e-6,
                      a.envelope[voiced][::stride])


def code(envelope: np.ndarray) -> np.ndarray:
    return pyworld.code_spectral_envelope(np.ascontiguousarray(envelope), WORLD_RATE, CODED_DIMS)


def decode(coded: np.ndarray) -> np.ndarray:
    return pyworld.decode_spectral_envelope(np.ascontiguousarray(coded), WORLD_RATE, FFT_SIZE)


def frequency_axis() -> np.ndarray:
    return np.arange(FFT_SIZE // 2 + 1) * WORLD_RATE / FFT_SIZE


def warp_envelope(envelope: np.ndarray, alpha: float) -> np.ndarray:
    """Scale formant frequencies by alpha: new(f) = old(f / alpha), interpolated in log power."""
    if abs(alpha - 1.0) < 1e-4:
        return envelope
    bins = envelope.shape[-1]
    source = np.clip(np.arange(bins) / alpha, 0, bins - 1)
    i0 = np.floor(source).astype(int)
    i1 = np.minimum(i0 + 1, bins - 1)
    w = source - i0
    log_env = np.log(envelope + 1e-12)
    return np.exp(log_env[..., i0] * (1 - w) + log_env[..., i1] * w)


def smooth_correction(difference: np.ndarray) -> np.ndarray:
    """Keep only the broad shape of a log-spectral difference (low quefrencies, no level term)."""
    freqs = frequency_axis()
    band = freqs <= ENVELOPE_BAND_HZ
    d = difference.copy()
    d[~band] = d[band][-1]                         # flat above the band both voices share
    cepstrum = np.fft.irfft(d)
    cepstrum[0] = 0.0                              # loudness is set separately
    cepstrum[CEPSTRAL_ORDER + 1:-CEPSTRAL_ORDER] = 0.0
    return np.clip(np.fft.rfft(cepstrum).real, -MAX_CORRECTION, MAX_CORRECTION)


@dataclass
class Conversion:
    """How one base voice is moved to one prompt voice (precomputed per voice and language)."""
    source: VoiceStats
    target: VoiceStats
    warp: float
    correction: np.ndarray                          # (bins,) log power added to every frame
    source_coded: tuple[np.ndarray, np.ndarray] | None = None   # warped base voice mean, std


def base_voice_distance(source: VoiceStats, target: VoiceStats) -> float:
    """How far a base voice's (warped) envelope statistics are from the prompt's."""
    c = plan_conversion(source, target)
    if c.source_coded is None:
        return float(np.mean((c.correction) ** 2))
    mu_s, _ = c.source_coded
    return float(np.mean(((target.coded_mean - mu_s) / target.coded_std)[1:] ** 2))


def plan_conversion(source: VoiceStats, target: VoiceStats) -> Conversion:
    ratio = target.median_f0 / source.median_f0
    alpha = float(np.clip(ratio ** WARP_EXPONENT, *WARP_LIMITS))
    warped_mean = np.log(warp_envelope(np.exp(source.mean_log_envelope), alpha) + 1e-12)
    correction = smooth_correction(target.mean_log_envelope - warped_mean)
    source_coded = None
    if source.voiced_envelopes is not None and target.coded_mean is not None:
        warped = code(warp_envelope(source.voiced_envelopes, alpha))
        source_coded = (warped.mean(axis=0), warped.std(axis=0) + 1e-6)
    return Conversion(source, target, alpha, correction, source_coded)


@dataclass
class Shaping:
    """Style adjustments applied during conversion."""
    pitch: float = 1.0                  # F0 multiplier
    expressiveness: float = 1.0         # F0 spread multiplier
    tilt: float = 0.0                   # log power per octave above 1 kHz (brighter > 0)
    whisper: bool = False


def convert(x: np.ndarray, conversion: Conversion | None, shaping: Shaping) -> np.ndarray:
    """Re-synthesise espeak output (at WORLD_RATE) in the prompt's pitch and envelope."""
    if len(x) < FFT_SIZE:
        return x
    a = analyse(x, dio_speed=SYNTH_DIO_SPEED)
    f0, envelope, aperiodicity = a.f0.copy(), a.envelope, a.aperiodicity
    assert aperiodicity is not None                 # analysed with_aperiodicity (the default)
    voiced = f0 > 0
    if conversion is not None:
        source, target = conversion.source, conversion.target
        if voiced.any():
            log_f0 = np.log(f0[voiced])
            # trust this segment's own level once it has enough voiced frames
            n = int(voiced.sum())
            centre = (n * np.median(log_f0) + 50 * source.log_f0_median) / (n + 50)
            k = np.clip(target.log_f0_spread / source.log_f0_spread, *SPREAD_RATIO_CAP)
            f0[voiced] = np.exp(target.log_f0_median + (log_f0 - centre) * k * shaping.expressiveness)
        envelope = warp_envelope(envelope, conversion.warp)
        if conversion.source_coded is not None:
            envelope = _normalise_spectra(envelope, voiced, conversion.source_coded, conversion.target)
        else:
            envelope = envelope * np.exp(conversion.correction)[None, :]
        aperiodicity = np.clip(warp_envelope(aperiodicity, conversion.warp), 0.0, 1.0)
    elif voiced.any() and shaping.expressiveness != 1.0:
        log_f0 = np.log(f0[voiced])
        centre = np.median(log_f0)
        f0[voiced] = np.exp(centre + (log_f0 - centre) * shaping.expressiveness)
    f0[voiced] *= shaping.pitch
    if shaping.tilt:
        octaves = np.log2(np.maximum(frequency_axis(), 1000.0) / 1000.0)
        envelope = envelope * np.exp(shaping.tilt * octaves)[None, :]
    if shaping.whisper:
        f0[:] = 0.0
        aperiodicity = np.ones_like(aperiodicity)
    y = pyworld.synthesize(f0, np.ascontiguousarray(envelope), np.ascontiguousarray(aperiodicity),
                           WORLD_RATE, FRAME_MS)
    return y[: len(x)]



def _normalise_spectra(envelope: np.ndarray, voiced: np.ndarray, source_coded: tuple[np.ndarray, np.ndarray],
                       target: VoiceStats) -> np.ndarray:
    """Per-coefficient mean and spread of the coded envelope moved to the prompt's (voiced frames)."""
    mu_s, sd_s = source_coded
    mu_t, sd_t = target.coded_mean, target.coded_std
    c = code(envelope)
    ratio = np.clip(sd_t / sd_s, *SPECTRAL_SPREAD_CAP)
    ratio[0] = 1.0
    shift = mu_t - mu_s
    shift[0] = 0.0
    mapped = c + shift[None, :]
    mapped[voiced] = (mu_t + (c[voiced] - mu_s) * ratio)
    mapped[voiced, 0] = c[voiced, 0]
    # decoding is linear in the log domain, so the change decodes on its own
    delta = np.clip(np.log(decode(mapped - c)), -MAX_CORRECTION, MAX_CORRECTION)
    return envelope * np.exp(delta)
