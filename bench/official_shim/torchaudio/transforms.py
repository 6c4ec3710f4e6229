"""torchaudio.transforms.Resample, on our resampler (same kernel and length rule as torchaudio's)."""
from __future__ import annotations

import torch

from ._ours import features


class Resample(torch.nn.Module):
    def __init__(self, orig_freq: int = 16000, new_freq: int = 16000, lowpass_filter_width: int = 6,
                 rolloff: float = 0.99, **_ignored):
        super().__init__()
        self.orig_freq, self.new_freq = int(orig_freq), int(new_freq)
        self.lowpass_filter_width, self.rolloff = lowpass_filter_width, rolloff

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return features.resample(waveform, self.orig_freq, self.new_freq,
                                 lowpass_filter_width=self.lowpass_filter_width, rolloff=self.rolloff)
