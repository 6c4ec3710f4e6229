"""Prompt-audio features of the CosyVoice3 frontend, in plain torch.

Each function reproduces, to float32 rounding, the feature the released models were trained with:

* `resample`        torchaudio.transforms.Resample with its defaults (Hann-windowed sinc).
* `kaldi_fbank`     torchaudio.compliance.kaldi.fbank defaults, 80 bins -> `campplus_input` for campplus.onnx.
* `whisper_log_mel` openai-whisper's log_mel_spectrogram, 128 bins, for speech_tokenizer_v3.onnx.
* `prompt_mel`      Matcha-TTS mel_spectrogram (the yaml's `feat_extractor`), the flow's prompt mel.

The results agree with torchaudio / whisper / Matcha bit for bit or to ~1e-6 because every step
keeps their dtype and operation order (kernels and filter banks built in float64 and stored as
float32, the same reductions, the same padding).
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import overload

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cosyvoice.engines.cosyvoice3.config import PromptMelConfig

# ---------------------------------------------------------------------------------------------
# Resampling
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _sinc_kernel(orig: int, new: int, lowpass_filter_width: int, rolloff: float) -> tuple[Tensor, int]:
    """Polyphase filter bank (new, 1, 2*width + orig) for gcd-reduced rates, and the half width.

    Output phase j (time j/new) takes the input samples around it weighted by a Hann-windowed sinc
    whose cutoff is `rolloff` times the lower Nyquist frequency.
    """
    cutoff = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / cutoff)
    # Input sample offsets in units of input periods, float64: (1, 1, 2*width + orig).
    offsets = torch.arange(-width, width + orig, dtype=torch.float64)[None, None] / orig
    # Output phases are made in float32 then widened, as torchaudio does when no dtype is given.
    phases = (torch.arange(0, -new, -1, dtype=torch.float32)[:, None, None] / new).to(torch.float64)
    t = (phases + offsets) * cutoff                                   # (new, 1, 2*width + orig)
    t = t.clamp(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.tensor(1.0, dtype=t.dtype), t.sin() / t)
    kernel = sinc * (window * (cutoff / orig))
    return kernel.to(torch.float32), width


def resample(wav: Tensor, orig_sr: int, new_sr: int,
             lowpass_filter_width: int = 6, rolloff: float = 0.99) -> Tensor:
    """(C, N) float -> (C, ceil(N * new_sr / orig_sr)); same rate returns the input unchanged."""
    orig_sr, new_sr = int(orig_sr), int(new_sr)
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {new_sr}")
    if orig_sr == new_sr:
        return wav
    if not wav.is_floating_point():
        raise TypeError(f"resample needs a float waveform, got {wav.dtype}")
    g = math.gcd(orig_sr, new_sr)
    orig, new = orig_sr // g, new_sr // g
    kernel, width = _sinc_kernel(orig, new, lowpass_filter_width, rolloff)
    kernel = kernel.to(device=wav.device, dtype=wav.dtype)

    lead_shape, n = wav.shape[:-1], wav.shape[-1]
    flat = wav.reshape(-1, n)
    # Every `orig` input samples give `new` output samples, one per kernel row.
    padded = F.pad(flat, (width, width + orig))
    phases = F.conv1d(padded[:, None], kernel, stride=orig)          # (B, new, frames)
    out = phases.transpose(1, 2).reshape(flat.shape[0], -1)          # (B, new * frames)
    # The length rule runs through a float32 scalar in torchaudio; keep it for long inputs.
    n_out = int(torch.ceil(torch.tensor(new * n / orig, dtype=torch.float32)).item())
    return out[:, :n_out].reshape(*lead_shape, -1)


# ---------------------------------------------------------------------------------------------
# Kaldi fbank (speaker embedding input)
# ---------------------------------------------------------------------------------------------

_FLOAT32_EPS = torch.finfo(torch.float32).eps


@overload
def _kaldi_mel(hz: Tensor) -> Tensor: ...
@overload
def _kaldi_mel(hz: float) -> float: ...
def _kaldi_mel(hz: Tensor | float) -> Tensor | float:
    if isinstance(hz, Tensor):
        return 1127.0 * (1.0 + hz / 700.0).log()
    return 1127.0 * math.log(1.0 + hz / 700.0)


@lru_cache(maxsize=8)
def _kaldi_mel_banks(num_bins: int, padded_window: int, sample_rate: float,
                     low_hz: float, high_hz: float) -> Tensor:
    """Triangular filters on the Kaldi mel scale, (num_bins, padded_window // 2 + 1) float32.

    The last column (the Nyquist FFT bin) is always zero, as in Kaldi.
    """
    nyquist = 0.5 * sample_rate
    if high_hz <= 0.0:
        high_hz += nyquist
    if not (0.0 <= low_hz < nyquist and 0.0 < high_hz <= nyquist and low_hz < high_hz):
        raise ValueError(f"bad mel range {low_hz}..{high_hz} Hz for {sample_rate} Hz audio")
    mel_low = _kaldi_mel(low_hz)
    mel_high = _kaldi_mel(high_hz)
    step = (mel_high - mel_low) / (num_bins + 1)
    # Built in float32 like torchaudio (python-float x int tensor).
    index = torch.arange(num_bins).unsqueeze(1)                        # (bins, 1)
    left = mel_low + index * step
    center = mel_low + (index + 1.0) * step
    right = mel_low + (index + 2.0) * step
    bin_hz = (sample_rate / padded_window) * torch.arange(padded_window // 2)
    bin_mel = _kaldi_mel(bin_hz).unsqueeze(0)               # (1, fft_bins)
    rising = (bin_mel - left) / (center - left)
    falling = (right - bin_mel) / (right - center)
    banks = torch.clamp(torch.minimum(rising, falling), min=0.0)
    return F.pad(banks, (0, 1))                                        # (bins, fft_bins + 1)


@lru_cache(maxsize=8)
def _povey_window(size: int) -> Tensor:
    # A symmetric Hann window raised to 0.85.
    return torch.hann_window(size, periodic=False, dtype=torch.float32).pow(0.85)


def kaldi_fbank(wav_16k: Tensor, num_mel_bins: int = 80, sample_rate: int = 16000,
                frame_length_ms: float = 25.0, frame_shift_ms: float = 10.0,
                preemphasis: float = 0.97, low_hz: float = 20.0, high_hz: float = 0.0) -> Tensor:
    """(1, N) float32 -> (T, num_mel_bins) log mel filterbank energies, T = 1 + (N - 400) // 160.

    Kaldi framing with snip_edges (no partial frames), DC removal per frame, pre-emphasis with
    the frame's first sample repeated, Povey window, zero padding to a power-of-two FFT, power
    spectrum, log floored at float32 eps. No dither (deterministic), no energy column.
    """
    signal = wav_16k[0] if wav_16k.dim() == 2 else wav_16k             # first channel, (N,)
    window = int(sample_rate * frame_length_ms * 0.001)
    shift = int(sample_rate * frame_shift_ms * 0.001)
    fft_size = 1 << (window - 1).bit_length()
    if signal.shape[0] < window:
        return signal.new_zeros((0, num_mel_bins))

    frames = signal.unfold(0, window, shift)                           # (T, window)
    frames = frames - frames.mean(dim=1, keepdim=True)
    previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)
    frames = frames - preemphasis * previous
    frames = frames * _povey_window(window).to(frames.device, frames.dtype).unsqueeze(0)
    frames = F.pad(frames, (0, fft_size - window))                     # (T, fft_size)

    power = torch.fft.rfft(frames).abs().pow(2.0)                       # (T, fft_size // 2 + 1)
    banks = _kaldi_mel_banks(num_mel_bins, fft_size, float(sample_rate), float(low_hz), float(high_hz))
    energies = torch.mm(power, banks.to(power.device, power.dtype).T)    # (T, bins)
    eps = torch.tensor(_FLOAT32_EPS, device=energies.device, dtype=energies.dtype)
    return torch.maximum(energies, eps).log()


def campplus_input(fbank: Tensor) -> Tensor:
    """(T, 80) fbank -> (1, T, 80) with each bin's mean over time removed (what campplus.onnx takes)."""
    return (fbank - fbank.mean(dim=0, keepdim=True)).unsqueeze(0)


# ---------------------------------------------------------------------------------------------
# Slaney mel filters (librosa.filters.mel defaults), shared by whisper and Matcha
# ---------------------------------------------------------------------------------------------

_SLANEY_LINEAR_HZ_PER_MEL = 200.0 / 3
_SLANEY_LOG_START_HZ = 1000.0
_SLANEY_LOG_START_MEL = _SLANEY_LOG_START_HZ / _SLANEY_LINEAR_HZ_PER_MEL
_SLANEY_LOG_STEP = math.log(6.4) / 27.0


def _slaney_hz_to_mel(hz: np.ndarray) -> np.ndarray:
    mel = hz / _SLANEY_LINEAR_HZ_PER_MEL
    upper = hz >= _SLANEY_LOG_START_HZ
    mel[upper] = _SLANEY_LOG_START_MEL + np.log(hz[upper] / _SLANEY_LOG_START_HZ) / _SLANEY_LOG_STEP
    return mel


def _slaney_mel_to_hz(mel: np.ndarray) -> np.ndarray:
    hz = _SLANEY_LINEAR_HZ_PER_MEL * mel
    upper = mel >= _SLANEY_LOG_START_MEL
    hz[upper] = _SLANEY_LOG_START_HZ * np.exp(_SLANEY_LOG_STEP * (mel[upper] - _SLANEY_LOG_START_MEL))
    return hz


@lru_cache(maxsize=8)
def slaney_mel_filters(sample_rate: int, n_fft: int, n_mels: int,
                       fmin: float = 0.0, fmax: float | None = None) -> Tensor:
    """(n_mels, n_fft // 2 + 1) float32, area-normalised triangles on the Slaney mel scale.

    Same numbers as librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax) (float64 math, float32
    rows, then the normalisation applied to the float32 rows). Cached: build once per config.
    """
    fmax = sample_rate / 2.0 if fmax is None else float(fmax)
    fft_hz = np.fft.rfftfreq(n=n_fft, d=1.0 / sample_rate)
    mel_edges = np.linspace(_slaney_hz_to_mel(np.array([float(fmin)]))[0],
                            _slaney_hz_to_mel(np.array([fmax]))[0], n_mels + 2)
    edge_hz = _slaney_mel_to_hz(mel_edges)
    widths = np.diff(edge_hz)
    distance = np.subtract.outer(edge_hz, fft_hz)                      # (n_mels + 2, fft_bins)
    filters = np.zeros((n_mels, len(fft_hz)), dtype=np.float32)
    for i in range(n_mels):
        rising = -distance[i] / widths[i]
        falling = distance[i + 2] / widths[i + 1]
        filters[i] = np.maximum(0.0, np.minimum(rising, falling))
    filters *= (2.0 / (edge_hz[2:n_mels + 2] - edge_hz[:n_mels]))[:, None]
    return torch.from_numpy(filters)


# ---------------------------------------------------------------------------------------------
# Whisper log-mel (speech tokenizer input)
# ---------------------------------------------------------------------------------------------

WHISPER_N_FFT = 400
WHISPER_HOP = 160
WHISPER_SAMPLE_RATE = 16000


@lru_cache(maxsize=4)
def _periodic_hann(size: int) -> Tensor:
    return torch.hann_window(size, dtype=torch.float32)


def whisper_log_mel(wav_16k: Tensor, n_mels: int = 128) -> Tensor:
    """(1, N) float32 at 16 kHz -> (1, n_mels, N // 160) whisper log-mel (about [-1.5, 1.5]).

    Centered STFT (reflect padding) whose last frame is dropped, power spectrum, Slaney mel,
    log10 floored at 1e-10 and at (max - 8), then (x + 4) / 4.
    """
    window = _periodic_hann(WHISPER_N_FFT).to(wav_16k.device)
    spec = torch.stft(wav_16k, WHISPER_N_FFT, WHISPER_HOP, window=window, return_complex=True)
    power = spec[..., :-1].abs() ** 2                                   # (1, 201, T)
    filters = slaney_mel_filters(WHISPER_SAMPLE_RATE, WHISPER_N_FFT, n_mels).to(wav_16k.device)
    mel = filters @ power                                               # (1, n_mels, T)
    log_mel = torch.clamp(mel, min=1e-10).log10()
    log_mel = torch.maximum(log_mel, log_mel.max() - 8.0)
    return (log_mel + 4.0) / 4.0


# ---------------------------------------------------------------------------------------------
# Matcha mel (flow prompt features)
# ---------------------------------------------------------------------------------------------


def prompt_mel(wav_24k: Tensor, sample_rate: int = 24000, n_fft: int = 1920, hop: int = 480,
               win: int = 1920, n_mels: int = 80, fmin: float = 0.0, fmax: float | None = None,
               center: bool = False) -> Tensor:
    """(1, N) float32 -> (1, n_mels, T) natural-log mel magnitude, T = N // hop for the defaults.

    The signal is reflect-padded by (n_fft - hop) / 2 on both sides so that frames are centred
    on multiples of `hop`; magnitude = sqrt(re^2 + im^2 + 1e-9); log floored at 1e-5.
    """
    pad = int((n_fft - hop) / 2)
    padded = F.pad(wav_24k.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)   # (1, N + 2*pad)
    window = _periodic_hann(win).to(wav_24k.device)
    spec = torch.stft(padded, n_fft, hop_length=hop, win_length=win, window=window, center=center,
                      pad_mode="reflect", normalized=False, onesided=True, return_complex=True)
    spec = torch.view_as_real(spec)                                     # (1, fft_bins, T, 2)
    magnitude = torch.sqrt(spec.pow(2).sum(-1) + 1e-9)                 # (1, fft_bins, T)
    filters = slaney_mel_filters(sample_rate, n_fft, n_mels, float(fmin),
                                 None if fmax is None else float(fmax)).to(wav_24k.device)
    mel = torch.matmul(filters, magnitude)                              # (1, n_mels, T)
    return torch.log(torch.clamp(mel, min=1e-5))


def prompt_mel_from_config(wav_24k: Tensor, config: PromptMelConfig) -> Tensor:
    return prompt_mel(wav_24k, sample_rate=config.sample_rate, n_fft=config.n_fft, hop=config.hop,
                      win=config.win, n_mels=config.n_mels, fmin=config.fmin, fmax=config.fmax,
                      center=config.center)


def align_prompt(prompt_feat: Tensor, prompt_tokens: Tensor, token_mel_ratio: int = 2) -> tuple[Tensor, Tensor]:
    """Cut prompt mel (1, T, 80) and speech tokens (1, n) to a common length.

    The flow needs exactly `token_mel_ratio` mel frames per prompt token, while the mel
    (480-sample hop at 24 kHz) and the tokens (25/s from 16 kHz audio) are counted separately:
    the official zero-shot frontend keeps n' = min(T // ratio, n) tokens and ratio * n' frames.
    """
    n_tokens = min(prompt_feat.shape[1] // token_mel_ratio, prompt_tokens.shape[1])
    return prompt_feat[:, :token_mel_ratio * n_tokens], prompt_tokens[:, :n_tokens]


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_mono(path: str, target_sr: int) -> Tensor:
    """Read a file with soundfile as float32, average the channels, resample: (1, N)."""
    import soundfile as sf

    data, sr = sf.read(str(path), dtype="float32", always_2d=True)    # (N, C)
    wav = torch.from_numpy(np.ascontiguousarray(data.T)).mean(dim=0, keepdim=True)
    return resample(wav, sr, target_sr)
