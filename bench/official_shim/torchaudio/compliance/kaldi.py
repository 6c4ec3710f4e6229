"""torchaudio.compliance.kaldi.fbank for the arguments the official frontend passes (80 bins, 16 kHz,
dither 0, the other options at their defaults), on our Kaldi fbank."""
from __future__ import annotations

import torch

from .._ours import features


def fbank(waveform: torch.Tensor, num_mel_bins: int = 23, dither: float = 0.0,
          sample_frequency: float = 16000.0, **options) -> torch.Tensor:
    if dither != 0.0 or options:
        raise NotImplementedError(f"bench torchaudio shim: fbank supports dither=0 and default options only, "
                                  f"got dither={dither}, {options}")
    return features.kaldi_fbank(waveform, num_mel_bins=num_mel_bins, sample_rate=int(sample_frequency))
