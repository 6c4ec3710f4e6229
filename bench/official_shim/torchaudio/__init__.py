"""A stand-in `torchaudio` for running the official CosyVoice code in bench/memory.py only.

torchaudio publishes no build for the torch we run (2.13), and the official inference path needs
just three things from it: `load` (reading the prompt wav), `transforms.Resample` and
`compliance.kaldi.fbank`. They are answered here with soundfile and with our own torchaudio-exact
resampler and Kaldi fbank (cosyvoice/engines/cosyvoice3/features.py). This directory is put on
PYTHONPATH for the official child process alone; nothing of ours imports it.
"""
from __future__ import annotations

import numpy as np
import torch

from . import compliance, transforms  # noqa: F401  (torchaudio exposes both as attributes)
from ._ours import features

__version__ = "0.0.0+bench-shim"


def load(path, backend: str | None = None, **_ignored):
    """(channels, samples) float32 and the sample rate, as torchaudio.load returns them."""
    import soundfile

    data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)    # (samples, channels)
    return torch.from_numpy(np.ascontiguousarray(data.T)), rate


__all__ = ["load", "transforms", "compliance", "features"]
