"""The fixed noise the official CosyVoice3 flow and HiFT constructors draw, replayed on a private generator.

The official code seeds torch's global CPU generator with 0 inside the flow's CFM constructor and
then keeps drawing from it while the rest of the model is built: the flow's initial Euler state,
the default initialisation of a few layers (values later overwritten by the checkpoint, but their
draws still advance the generator), and the sine source's phase offsets and additive noise. Those
tensors are used as-is at every inference call, so synthesis is deterministic. We replay the same
sequence of draws on our own `torch.Generator` so that the global RNG is never touched.

Draw order (each item is one torch call on the generator; sizes from the flow and HiFT configs):
  1. flow_z            randn(1, 80, 15000)                     (the CFM's rand_noise)
  2. flow embedding    normal_   (vocab_size, input_size)      (nn.Embedding init)
  3. spk affine        uniform_  (output_size, spk_embed_dim), uniform_ (output_size)   (nn.Linear init)
  4. F0 predictor      uniform_ weight + uniform_ bias for Conv1d(in, C, 4), four Conv1d(C, C, 3),
                       then Linear(C, num_class)
  5. rand_ini          rand(1, 9), column 0 set to 0
  6. sine_waves        rand(1, 7_200_000, 9)
  (then Linear(9, 1) init and the source module's uv noise, neither of which is ever used.)

Memory: flow_z is 4.8 MB. sine_waves would be 259 MB in full, but a HiFT call only reads its first
480 * n_mel_frames rows (0.86 MB per second of audio), so it is drawn lazily: we keep the generator
positioned after the rows drawn so far and extend the prefix on demand. CPU uniform draws fill a
tensor element by element in order, so a prefix drawn this way is bit-identical to the same rows
of the full tensor. The cache therefore holds the longest prefix any call has needed so far.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

import torch
from torch import Tensor

from cosyvoice.engines.cosyvoice3.config import SINE_NOISE_COLUMNS, FlowConfig, HiFTConfig

SEED = 0
# Hard-coded in the official constructors, independent of the yaml.
FLOW_NOISE_SHAPE = (1, 80, 50 * 300)
SINE_NOISE_SAMPLES = 300 * 24000
# Lazy growth step for the sine noise cache: 10 s at 24 kHz, so short streaming calls do not redraw often.
_GROWTH_SAMPLES = 240_000


@dataclass
class ConstructorNoise:
    flow_z: Tensor       # (1, 80, 15000) float32 standard normal: the flow's initial Euler state
    rand_ini: Tensor     # (1, 9) float32 uniform [0, 1) with [:, 0] = 0: per-harmonic phase offsets
    _sine_generator: torch.Generator = field(repr=False)
    _sine_prefix: Tensor = field(repr=False)   # (1, n_drawn, 9): the rows of sine_waves drawn so far
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def sine_waves_prefix(self, n_samples: int) -> Tensor:
        """The first `n_samples` rows of the official `sine_waves` (1, 7_200_000, 9), uniform [0, 1)."""
        if n_samples > SINE_NOISE_SAMPLES:
            raise ValueError(f"a single vocoder call is limited to {SINE_NOISE_SAMPLES} samples "
                             f"({SINE_NOISE_SAMPLES // 24000} s at 24 kHz), {n_samples} were asked for")
        with self._lock:
            drawn = self._sine_prefix.shape[1]
            if n_samples > drawn:
                target = min(SINE_NOISE_SAMPLES, max(n_samples, drawn + _GROWTH_SAMPLES))
                extension = torch.rand(1, target - drawn, SINE_NOISE_COLUMNS, generator=self._sine_generator)
                self._sine_prefix = torch.cat([self._sine_prefix, extension], dim=1)
            return self._sine_prefix[:, :n_samples]


def constructor_noise(flow: FlowConfig, hift: HiFTConfig) -> ConstructorNoise:
    """Replay the official constructor draws for a model with these flow and vocoder sizes."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(SEED)

    flow_z = torch.randn(FLOW_NOISE_SHAPE, generator=gen)

    torch.empty(flow.vocab_size, flow.token_dim).normal_(generator=gen)
    _skip_default_init(gen, (flow.mel_dim, flow.spk_embed_dim))

    cond_channels = hift.f0_cond_channels
    _skip_default_init(gen, (cond_channels, hift.f0_in_channels, 4))
    for _ in range(4):
        _skip_default_init(gen, (cond_channels, cond_channels, 3))
    _skip_default_init(gen, (hift.f0_num_class, cond_channels))

    rand_ini = torch.rand(1, SINE_NOISE_COLUMNS, generator=gen)
    rand_ini[:, 0] = 0
    return ConstructorNoise(flow_z=flow_z, rand_ini=rand_ini, _sine_generator=gen,
                            _sine_prefix=torch.empty(1, 0, SINE_NOISE_COLUMNS))


def _skip_default_init(gen: torch.Generator, weight_shape: tuple[int, ...]) -> None:
    """Consume what nn.Linear / nn.Conv1d reset_parameters draws: kaiming_uniform_ weight, then uniform bias.

    Only the number and kind of draws matter (one float32 uniform per element, weight first); the
    bounds are reproduced anyway so the values equal those of the official layers.
    """
    fan_in = math.prod(weight_shape[1:])
    bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform_(a=sqrt(5)) and the bias bound coincide
    torch.empty(weight_shape).uniform_(-bound, bound, generator=gen)
    torch.empty(weight_shape[0]).uniform_(-bound, bound, generator=gen)
