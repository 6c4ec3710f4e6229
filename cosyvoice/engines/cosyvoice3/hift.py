"""Causal HiFT vocoder of CosyVoice3: mel (80 x frames) -> 24 kHz waveform.

Three parts, all causal so that streaming chunks match the one-shot result:
  * F0 predictor: five weight-normed convs + a linear layer, run in float64 (see F0Predictor).
  * Harmonic source (neural source filter): F0 -> nine sine harmonics + fixed noise -> one excitation.
  * Decoder (iSTFTNet): mel -> conv_pre -> [nearest upsample + conv, + downsampled source STFT,
    three parallel Snake resblocks] x 3 -> conv_post -> magnitude/phase -> inverse STFT.

With finalize=False the call is a streaming chunk whose last frames only serve as right context:
the F0 predictor's first conv and conv_pre read real future frames instead of zero padding, and
the samples that still depend on frames not seen yet are dropped.

Speed (exact float32, same results up to rounding): weight norm is folded at load, the nearest
upsampling + conv pairs run as polyphase convs on the low-rate signal (UpsampleConv), activations
on CPU are kept time-major so oneDNN convolves them without layout reorders
(CausalHiFT.use_time_major_layout), and Snake / residual sums work in place.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cosyvoice.engines.cosyvoice3.checkpoint import fold_weight_norm, load_strict, read_state_dict
from cosyvoice.engines.cosyvoice3.config import F0_FIRST_KERNEL, HiFTConfig
from cosyvoice.engines.cosyvoice3.noise import ConstructorNoise

HIFT_FILE = "hift.pt"
SNAKE_EPS = 1e-9
MAGNITUDE_LIMIT = 1e2
POST_LRELU_SLOPE = 0.01  # the activation before conv_post uses torch's default slope, not lrelu_slope


# ---------------------------------------------------------------------------------------------
# Convolutions. The checkpoint's weight-norm pairs are folded into plain weights at load time.


def _conv(x: Tensor, weight: Tensor, bias: Tensor | None, stride: int = 1, padding: int = 0,
          dilation: int = 1) -> Tensor:
    """conv1d computed as a height-1 conv2d.

    Same arithmetic; the difference is memory layout: torch's conv1d first makes its input contiguous
    in (batch, channel, time) order, which would undo time-major activations (see
    CausalHiFT.use_time_major_layout) with a copy before and after every conv. conv2d keeps them.
    """
    y = F.conv2d(x.unsqueeze(2), weight.unsqueeze(2), bias, (1, stride), (0, padding), (1, dilation))
    return y.squeeze(2)


class LeftPaddedConv(nn.Conv1d):
    """Causal conv: output t sees inputs t - (k-1)*d .. t (zeros before the start).

    The conv pads both sides itself (no padded copy of the input) and the extra outputs at the end
    are sliced off; the result is a view, which no consumer needs contiguous.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1):
        left_pad = (kernel_size - 1) * dilation
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation, padding=left_pad)
        self.left_pad = left_pad

    def forward(self, x: Tensor) -> Tensor:
        y = _conv(x, self.weight, self.bias, padding=self.left_pad, dilation=self.dilation[0])
        return y[:, :, :x.shape[2]]


class LookAheadConv(nn.Conv1d):
    """Anti-causal conv: output t sees inputs t .. t + k-1.

    finalize=True pads k-1 zero frames on the right (end of the utterance); finalize=False treats the
    last k-1 input frames as context only, so the output has k-1 fewer frames than the input.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__(in_channels, out_channels, kernel_size)
        self.look_right = kernel_size - 1

    # Unlike Conv1d it needs to know whether the input is final; only CausalHiFT calls it.
    def forward(self, x: Tensor, finalize: bool) -> Tensor:  # type: ignore[override]
        if finalize:
            x = F.pad(x, (0, self.look_right))
        return _conv(x, self.weight, self.bias)


class UpsampleConv(nn.Conv1d):
    """Nearest-neighbour upsampling by `rate`, then a left-causal conv of kernel k.

    Computed without materialising the upsampled signal: output sample rate*q + r reads upsampled
    samples rate*q + r - (k-1) .. rate*q + r, i.e. input frames q + (r - (k-1) + j) // rate for tap j.
    Summing the taps that land on the same frame gives, per phase r, a causal conv over the input
    frames with only 1 + ceil((k-1)/rate) taps; all phases run as one conv with rate x out_channels
    outputs, which are then interleaved. About k / taps times fewer multiply-adds (16/3 for the first
    stage); the pre-summed taps change float32 rounding only.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, rate: int):
        super().__init__(in_channels, out_channels, kernel_size)
        self.rate = rate
        self.taps = 1 + -(-(kernel_size - 1) // rate)
        self._phase_cache: tuple | None = None

    def _phase_weights(self) -> tuple[Tensor, Tensor]:
        w = self.weight
        version = None if w.is_inference() else w._version  # inference tensors cannot change in place
        key = (w.data_ptr(), version, w.dtype, w.device, w.stride())
        if self._phase_cache is None or self._phase_cache[0] != key:
            out_ch, in_ch, k = w.shape
            phase = torch.zeros(self.rate, out_ch, in_ch, self.taps, dtype=torch.float64, device=w.device)
            for r in range(self.rate):
                for j in range(k):
                    frame = (r - (k - 1) + j) // self.rate                # in -(taps-1) .. 0
                    phase[r, :, :, frame + self.taps - 1] += w[:, :, j].double()
            # Phase-major output channels (r * C_out + c): in time-major memory the conv output then
            # already is the interleaved signal and the reshape below is free.
            weight = _like_layout(phase.reshape(self.rate * out_ch, in_ch, self.taps).to(w.dtype), w)
            assert self.bias is not None               # built with one (the checkpoint has it)
            bias = self.bias.detach().repeat(self.rate)
            self._phase_cache = (key, weight, bias)
        return self._phase_cache[1], self._phase_cache[2]

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = self._phase_weights()
        batch, _, frames = x.shape
        y = _conv(x, weight, bias, padding=self.taps - 1)[:, :, :frames]  # (B, rate * C_out, T), causal
        y = y.transpose(1, 2).reshape(batch, frames * self.rate, self.out_channels)
        return y.transpose(1, 2)                                             # (B, C_out, T * rate)


class DownsampleConv(nn.Conv1d):
    """Strided causal conv (kernel 2*rate, stride rate) with rate-1 zero frames on the left."""

    def __init__(self, in_channels: int, out_channels: int, rate: int):
        super().__init__(in_channels, out_channels, 2 * rate, stride=rate)
        self.left_pad = rate - 1

    def forward(self, x: Tensor) -> Tensor:
        return _conv(F.pad(x, (self.left_pad, 0)), self.weight, self.bias, stride=self.stride[0])


class Snake(nn.Module):
    """x + sin^2(alpha x) / alpha, one alpha per channel (periodic inductive bias for audio)."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        # One new tensor updated in place instead of five temporaries: these activations are the
        # largest tensors of the model and each pass over them is memory-bound. Same formula and order
        # as x + (1 / (alpha + eps)) * sin(x * alpha) ** 2 (addcmul may fuse the last multiply-add).
        alpha = self.alpha[None, :, None]
        y = torch.mul(x, alpha)
        y.sin_()
        y.mul_(y)
        return torch.addcmul(x, y, 1.0 / (alpha + SNAKE_EPS), out=y)


class ResBlock(nn.Module):
    """Per dilation: x += conv2(snake(conv1_dilated(snake(x)))), all convs left-causal."""

    def __init__(self, channels: int, kernel_size: int, dilations: Sequence[int]):
        super().__init__()
        self.convs1 = nn.ModuleList(LeftPaddedConv(channels, channels, kernel_size, d) for d in dilations)
        self.convs2 = nn.ModuleList(LeftPaddedConv(channels, channels, kernel_size) for _ in dilations)
        self.activations1 = nn.ModuleList(Snake(channels) for _ in dilations)
        self.activations2 = nn.ModuleList(Snake(channels) for _ in dilations)

    def forward(self, x: Tensor) -> Tensor:
        # The input is shared with sibling blocks and never modified; the sums go into fresh conv outputs.
        for conv1, conv2, act1, act2 in zip(self.convs1, self.convs2, self.activations1, self.activations2):
            x = conv2(act2(conv1(act1(x)))).add_(x)
        return x


def _is_time_major(x: Tensor) -> bool:
    """(B, C, T) stored as B x T x C, the layout oneDNN's direct convolutions read without reordering."""
    return x.dim() == 3 and x.stride(1) == 1 and x.stride(2) == x.shape[1] and x.shape[1] > 1


def _time_major(x: Tensor) -> Tensor:
    return x if _is_time_major(x) else x.transpose(1, 2).contiguous().transpose(1, 2)


def _like_layout(x: Tensor, reference: Tensor) -> Tensor:
    return _time_major(x) if _is_time_major(reference) else x.contiguous()


def _reflect_pad_one_left(x: Tensor) -> Tensor:
    """F.pad(x, (1, 0), mode="reflect") that keeps x's memory layout."""
    batch, channels, frames = x.shape
    if _is_time_major(x):
        out = torch.empty(batch, frames + 1, channels, dtype=x.dtype, device=x.device).transpose(1, 2)
    else:
        out = x.new_empty(batch, channels, frames + 1)
    out[:, :, 1:] = x
    out[:, :, :1] = x[:, :, 1:2]
    return out


# ---------------------------------------------------------------------------------------------
# F0 and the harmonic source.


class F0Predictor(nn.Module):
    """mel (B, 80, T) -> F0 in Hz (B, T'), T' = T (finalize) or T - 3 (streaming chunk).

    The official inference casts this module and the mel to float64 on every call: the sine
    source integrates F0 over the whole utterance, so float32 rounding here would shift the phase
    of every later sample and chunked output would drift from one-shot output. We keep its weights
    in float64 permanently and do the same.
    """

    FIRST_KERNEL = F0_FIRST_KERNEL
    KERNEL = 3
    N_CONVS = 5

    def __init__(self, in_channels: int, cond_channels: int):
        super().__init__()
        self.convs = nn.ModuleList([LookAheadConv(in_channels, cond_channels, self.FIRST_KERNEL)])
        self.convs.extend(LeftPaddedConv(cond_channels, cond_channels, self.KERNEL) for _ in range(self.N_CONVS - 1))
        self.classifier = nn.Linear(cond_channels, 1)

    def forward(self, mel: Tensor, finalize: bool) -> Tensor:
        x = F.elu(self.convs[0](mel, finalize))
        for conv in self.convs[1:]:
            x = F.elu(conv(x))
        return self.classifier(x.transpose(1, 2)).squeeze(-1).abs()     # (B, T')


class HarmonicSource(nn.Module):
    """F0 per frame -> excitation per sample: nine harmonics plus fixed noise, merged by a linear layer.

    Follows the official causal sine generator exactly, including its quirks: the phase is integrated
    at frame rate (rad/sample of each frame, linearly downsampled, cumsum, x samples_per_frame) and
    then held constant over the frame's samples; the additive noise is the fixed *uniform* [0, 1)
    noise drawn in the constructor, not Gaussian.
    """

    harmonics: Tensor                # a buffer, declared so its type is known

    def __init__(self, config: HiFTConfig):
        super().__init__()
        self.sampling_rate = config.sampling_rate
        self.upsample = config.samples_per_frame
        self.sine_amp = config.nsf_alpha
        self.noise_std = config.nsf_sigma
        self.voiced_threshold = config.nsf_voiced_threshold
        self.register_buffer("harmonics", torch.arange(1, config.nb_harmonics + 2, dtype=torch.float32),
                             persistent=False)
        self.harmonic_merge = nn.Linear(config.nb_harmonics + 1, 1)

    def forward(self, f0: Tensor, noise: ConstructorNoise) -> Tensor:
        """f0 (1, T) float32 -> source (1, 1, T * samples_per_frame)."""
        f0 = torch.repeat_interleave(f0, self.upsample, dim=1)[:, :, None]  # (1, L, 1)
        n_samples = f0.shape[1]
        rad = (f0 * self.harmonics / self.sampling_rate) % 1                 # (1, L, 9) cycles per sample
        rad[:, 0, :] = rad[:, 0, :] + noise.rand_ini.to(rad)
        rad = F.interpolate(rad.transpose(1, 2), scale_factor=1 / self.upsample, mode="linear")  # (1, 9, T)
        phase = torch.cumsum(rad.transpose(1, 2), dim=1) * 2 * math.pi      # (1, T, 9)
        phase = F.interpolate(phase.transpose(1, 2) * self.upsample, scale_factor=self.upsample,
                              mode="nearest").transpose(1, 2)                # (1, L, 9)
        sines = torch.sin(phase) * self.sine_amp

        voiced = (f0 > self.voiced_threshold).to(sines.dtype)               # (1, L, 1)
        noise_amp = voiced * self.noise_std + (1 - voiced) * self.sine_amp / 3
        sines = sines * voiced + noise_amp * noise.sine_waves_prefix(n_samples).to(sines)
        return torch.tanh(self.harmonic_merge(sines)).transpose(1, 2)        # (1, 1, L)


# ---------------------------------------------------------------------------------------------
# The generator.


class CausalHiFT(nn.Module):
    window: Tensor                   # a buffer, declared so its type is known

    def __init__(self, config: HiFTConfig):
        super().__init__()
        self.config = config
        c = config
        self.f0_predictor = F0Predictor(c.f0_in_channels, c.f0_cond_channels)
        self.source = HarmonicSource(c)
        self.conv_pre = LookAheadConv(c.in_channels, c.base_channels, c.conv_pre_look_right + 1)

        stage_channels = [c.base_channels // 2 ** (i + 1) for i in range(len(c.upsample_rates))]
        in_channels = [c.base_channels] + stage_channels[:-1]
        self.ups = nn.ModuleList(UpsampleConv(cin, cout, k, u) for cin, cout, k, u in
                                 zip(in_channels, stage_channels, c.upsample_kernel_sizes, c.upsample_rates))

        # The source STFT has one frame per hop; stage i runs at (product of the first i+1 rates)
        # frames per mel frame, so the source is downsampled by the product of the remaining rates.
        spec_channels = c.n_fft + 2
        self.source_downs = nn.ModuleList()
        for i, cout in enumerate(stage_channels):
            rate = math.prod(c.upsample_rates[i + 1:])
            self.source_downs.append(DownsampleConv(spec_channels, cout, rate) if rate > 1
                                     else LeftPaddedConv(spec_channels, cout, 1))
        self.source_resblocks = nn.ModuleList(
            ResBlock(ch, k, d) for ch, k, d in
            zip(stage_channels, c.source_resblock_kernel_sizes, c.source_resblock_dilation_sizes))
        self.resblocks = nn.ModuleList(
            ResBlock(ch, k, d) for ch in stage_channels
            for k, d in zip(c.resblock_kernel_sizes, c.resblock_dilation_sizes))
        self.conv_post = LeftPaddedConv(stage_channels[-1], spec_channels, 7)
        window = torch.hann_window(c.n_fft, periodic=True, dtype=torch.float64).to(torch.float32)
        self.register_buffer("window", window, persistent=False)

    def use_time_major_layout(self) -> "CausalHiFT":
        """Store the decoder's conv weights time-major (B x T x C activations follow from them).

        On x86 CPUs oneDNN then runs its direct convolutions on the activations as they are instead
        of reordering every input and output to a blocked layout and back. Values are unchanged.
        """
        for name, module in self.named_modules():
            if isinstance(module, nn.Conv1d) and not name.startswith("f0_predictor"):
                module.weight.data = _time_major(module.weight.data)
        return self

    # -- STFT helpers ---------------------------------------------------------------------------

    def _source_spectrum(self, source: Tensor) -> Tensor:
        """(1, 1, L) -> (1, n_fft + 2, L / hop + 1): real parts then imaginary parts."""
        spec = torch.stft(source.squeeze(1), self.config.n_fft, self.config.hop_len, self.config.n_fft,
                          window=self.window, return_complex=True)
        spec = torch.view_as_real(spec)
        return torch.cat([spec[..., 0], spec[..., 1]], dim=1)

    def _waveform(self, x: Tensor) -> Tensor:
        """conv_post output (1, n_fft + 2, F) -> waveform (1, (F - 1) * hop)."""
        n_bins = self.config.n_fft // 2 + 1
        magnitude = torch.clip(torch.exp(x[:, :n_bins]), max=MAGNITUDE_LIMIT)
        phase = torch.sin(x[:, n_bins:])  # the official model bounds its phase this way; we keep it
        spec = torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase))
        return torch.istft(spec, self.config.n_fft, self.config.hop_len, self.config.n_fft, window=self.window)

    # -- forward --------------------------------------------------------------------------------

    def decode(self, mel: Tensor, source: Tensor, finalize: bool) -> Tensor:
        """mel (1, 80, T) + source (1, 1, L) -> waveform (1, N).

        finalize: N = T * samples_per_frame. Otherwise the last conv_pre_look_right frames are right
        context only, and the last frame of the rest is dropped too (its tail needs the next chunk's
        overlap-add), so N = (T - conv_pre_look_right - 1) * samples_per_frame.
        """
        c = self.config
        spec = self._source_spectrum(source)                                 # (1, 18, L/hop + 1)
        x = self.conv_pre(mel, finalize)                                     # (1, base, T')
        if not finalize:
            spec = spec[:, :, :-math.prod(c.upsample_rates) * c.conv_pre_look_right]

        # x is always a tensor this function owns, so the activations and sums run in place.
        n_kernels = len(c.resblock_kernel_sizes)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, c.lrelu_slope, inplace=True))
            if i == len(self.ups) - 1:
                x = _reflect_pad_one_left(x)  # one frame more, to match the STFT's L/hop + 1
            x = x.add_(self.source_resblocks[i](self.source_downs[i](spec)))
            blocks = self.resblocks[i * n_kernels:(i + 1) * n_kernels]
            total = blocks[0](x)
            for block in blocks[1:]:
                total.add_(block(x))
            x = total.div_(n_kernels)

        x = self.conv_post(F.leaky_relu(x, POST_LRELU_SLOPE, inplace=True))
        wave = self._waveform(x)
        if not finalize:
            wave = wave[:, :-c.samples_per_frame]
        return torch.clamp(wave, -c.audio_limit, c.audio_limit)

    def predict_f0(self, mel: Tensor, finalize: bool) -> Tensor:
        """mel (1, 80, T) -> float64 F0 (1, T or T - 3)."""
        return self.f0_predictor(mel.to(torch.float64), finalize)

    @torch.inference_mode()
    def inference(self, mel: Tensor, noise: ConstructorNoise, *, finalize: bool) -> tuple[Tensor, Tensor]:
        """mel (1, 80, T) -> (speech (1, N), source (1, 1, L)).

        finalize=True: N = L = T * 480. finalize=False (streaming chunk whose last frames are only
        look-ahead): L = (T - 3) * 480 and N = (T - 8) * 480 with the released configuration.
        """
        dtype = self.conv_pre.weight.dtype
        f0 = self.predict_f0(mel, finalize).to(dtype)                        # (1, T_f0)
        source = self.source(f0, noise)                                      # (1, 1, T_f0 * 480)
        mel = mel.to(dtype)
        if not finalize:
            mel = mel[:, :, :-self.config.f0_look_right]
        return self.decode(mel, source, finalize), source


def _key_map(key: str) -> str:
    # Official names -> ours: condnet holds the convs at even indices (ELUs in between).
    if key.startswith("f0_predictor.condnet."):
        index, rest = key[len("f0_predictor.condnet."):].split(".", 1)
        return f"f0_predictor.convs.{int(index) // 2}.{rest}"
    if key.startswith("m_source.l_linear."):
        return "source.harmonic_merge." + key[len("m_source.l_linear."):]
    return key


def load_hift(model_dir: str | Path, config: HiFTConfig, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32) -> CausalHiFT:
    """Build the vocoder for `config` and load `hift.pt` strictly (weight norm folded).

    The F0 predictor stays in float64 whatever `dtype` is (see F0Predictor).
    """
    model = CausalHiFT(config)
    raw = read_state_dict(Path(model_dir) / HIFT_FILE)
    # Fold the F0 predictor's weight norm from float64 copies: the official code computes that weight in float64.
    f0_raw = {k: v.double() for k, v in raw.items() if k.startswith("f0_predictor.")}
    rest = {k: v for k, v in raw.items() if not k.startswith("f0_predictor.")}
    state = fold_weight_norm(rest) | fold_weight_norm(f0_raw)
    model.to(dtype)
    model.f0_predictor.double()
    load_strict(model, state, HIFT_FILE, key_map=_key_map)  # copies cast each value to its parameter's dtype
    model.to(device)
    if torch.device(device).type == "cpu":
        model.use_time_major_layout()
    return model.eval()
