"""Configuration of a CosyVoice3 model directory as plain dataclasses.

Sizes come from the directory itself (cosyvoice3.yaml and CosyVoice-BlankEN/config.json), never
from constants here, so a tiny test model and the released 0.5B model load through the same path.

This is the only module that reads the yaml value tree: every section (llm, sampling, flow and its
DiT, hift, feat_extractor) becomes a typed dataclass here, and the modules below take those.
Keys a yaml may leave out take the official constructors' defaults.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cosyvoice.errors import ModelDirError
from cosyvoice.engines.cosyvoice3.model_dir import QWEN_DIR
from cosyvoice.engines.cosyvoice3.yaml_values import load_yaml_values

YAML_NAME = "cosyvoice3.yaml"
QWEN_CONFIG_NAME = "config.json"

# CosyVoice3LM reserves 200 ids after the speech tokens: sos, eos, task_id, fill, then unused.
EXTRA_SPEECH_IDS = 200
# The causal sine source draws one fixed noise column per harmonic plus the fundamental: 9 in the
# released vocoder, and the replayed constructor noise (noise.py) is drawn with that many columns.
SINE_NOISE_COLUMNS = 9
# Kernel of the F0 predictor's first conv; its right context is this minus one frame.
F0_FIRST_KERNEL = 4

T = TypeVar("T")


@dataclass
class LLMConfig:
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rope_theta: float
    rms_norm_eps: float
    text_vocab_size: int            # rows of Qwen's embed_tokens (151936 released)
    speech_token_size: int          # 6561: speech ids are 0..speech_token_size-1
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 32768

    @property
    def speech_vocab_size(self) -> int:
        return self.speech_token_size + EXTRA_SPEECH_IDS

    @property
    def sos_id(self) -> int:
        return self.speech_token_size

    @property
    def eos_id(self) -> int:
        return self.speech_token_size + 1

    @property
    def task_id(self) -> int:
        return self.speech_token_size + 2

    def is_stop(self, token: int) -> bool:
        """Every id from sos upwards ends decoding."""
        return token >= self.speech_token_size


@dataclass
class SamplingConfig:
    """Repetition-aware sampling: nucleus over the top_k most likely ids, with a full-distribution
    resample when the pick already occurs >= win_size * tau_r times in the last win_size tokens."""
    top_p: float = 0.8
    top_k: int = 25
    win_size: int = 10
    tau_r: float = 0.1


@dataclass(frozen=True)
class DiTConfig:
    """The flow's velocity estimator (yaml flow.decoder.estimator)."""
    dim: int
    depth: int
    heads: int
    dim_head: int
    ff_mult: float
    mel_dim: int
    mu_dim: int
    spk_dim: int
    out_channels: int
    static_chunk_size: int   # frames per attention block when streaming

    @classmethod
    def from_yaml(cls, estimator: dict[str, Any]) -> "DiTConfig":
        mel_dim = int(estimator.get("mel_dim", 80))
        mu_dim = estimator.get("mu_dim")
        out_channels = estimator.get("out_channels")
        return cls(
            dim=int(estimator["dim"]),
            depth=int(estimator.get("depth", 8)),
            heads=int(estimator.get("heads", 8)),
            dim_head=int(estimator.get("dim_head", 64)),
            ff_mult=float(estimator.get("ff_mult", 4)),
            mel_dim=mel_dim,
            mu_dim=mel_dim if mu_dim is None else int(mu_dim),
            spk_dim=int(estimator.get("spk_dim") or 0),
            out_channels=mel_dim if out_channels is None else int(out_channels),
            static_chunk_size=int(estimator.get("static_chunk_size", 50)),
        )


@dataclass(frozen=True)
class FlowConfig:
    """The flow-matching mel decoder (yaml flow)."""
    vocab_size: int
    token_dim: int            # token embedding width (= mu channels)
    mel_dim: int
    spk_embed_dim: int        # speaker vector from campplus
    token_mel_ratio: int
    lookahead: int            # tokens of right context the PreLookaheadLayer reads
    lookahead_channels: int
    cfg_rate: float           # classifier-free guidance strength at inference
    t_scheduler: str          # "cosine" or "linear"
    dit: DiTConfig

    @classmethod
    def from_yaml(cls, values: dict[str, Any]) -> "FlowConfig":
        """From the whole yaml tree (token_mel_ratio may sit at the top level)."""
        return _section("flow", lambda: cls._read(values))

    @classmethod
    def _read(cls, values: dict[str, Any]) -> "FlowConfig":
        flow = values["flow"]
        decoder = flow["decoder"]
        cfm = decoder["cfm_params"]
        cfm = cfm.get("content", cfm)          # omegaconf.DictConfig(content=...) wrapper
        lookahead_layer = flow["pre_lookahead_layer"]
        solver = str(cfm.get("solver", "euler"))
        if solver != "euler":
            raise ModelDirError(f"{YAML_NAME}: flow solver {solver!r} is not supported (only 'euler')")
        cfg = cls(
            vocab_size=int(flow["vocab_size"]),
            token_dim=int(flow["input_size"]),
            mel_dim=int(flow["output_size"]),
            spk_embed_dim=int(flow["spk_embed_dim"]),
            token_mel_ratio=int(flow.get("token_mel_ratio", values.get("token_mel_ratio", 2))),
            lookahead=int(flow.get("pre_lookahead_len", lookahead_layer.get("pre_lookahead_len", 3))),
            lookahead_channels=int(lookahead_layer["channels"]),
            cfg_rate=float(cfm["inference_cfg_rate"]),
            t_scheduler=str(cfm.get("t_scheduler", "cosine")),
            dit=DiTConfig.from_yaml(decoder["estimator"]),
        )
        if cfg.dit.mel_dim != cfg.mel_dim or cfg.dit.mu_dim != cfg.token_dim:
            raise ModelDirError(f"{YAML_NAME}: flow output_size/input_size disagree with the estimator's "
                                "mel_dim/mu_dim")
        return cfg


@dataclass(frozen=True)
class HiFTConfig:
    """The causal HiFT vocoder (yaml hift); defaults are the official constructor's."""
    in_channels: int = 80
    base_channels: int = 512
    nb_harmonics: int = 8
    sampling_rate: int = 22050
    nsf_alpha: float = 0.1            # sine amplitude
    nsf_sigma: float = 0.003          # noise amplitude in voiced regions
    nsf_voiced_threshold: float = 10  # Hz
    upsample_rates: tuple[int, ...] = (8, 8)
    upsample_kernel_sizes: tuple[int, ...] = (16, 16)
    n_fft: int = 16
    hop_len: int = 4
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5),) * 3
    source_resblock_kernel_sizes: tuple[int, ...] = (7, 11)
    source_resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5),) * 2
    lrelu_slope: float = 0.1
    audio_limit: float = 0.99
    conv_pre_look_right: int = 4
    f0_in_channels: int = 80
    f0_cond_channels: int = 512
    f0_num_class: int = 1

    @property
    def samples_per_frame(self) -> int:
        """Waveform samples per mel frame (480 at 24 kHz)."""
        return math.prod(self.upsample_rates) * self.hop_len

    @property
    def f0_look_right(self) -> int:
        """Right-context frames of the F0 predictor's first conv."""
        return F0_FIRST_KERNEL - 1

    @classmethod
    def from_yaml(cls, values: dict[str, Any]) -> "HiFTConfig":
        """From the whole yaml tree's `hift` mapping."""
        config = _section("hift", lambda: cls._read(values["hift"]))
        config.check()
        return config

    @classmethod
    def _read(cls, hift: dict[str, Any]) -> "HiFTConfig":
        default = cls()
        f0 = hift.get("f0_predictor") or {}
        istft = hift.get("istft_params") or {}

        def ints(key: str) -> tuple[int, ...]:
            return tuple(int(v) for v in hift.get(key, getattr(default, key)))

        def int_lists(key: str) -> tuple[tuple[int, ...], ...]:
            return tuple(tuple(int(d) for d in ds) for ds in hift.get(key, getattr(default, key)))

        def number(key: str, kind: Callable[[Any], T]) -> T:
            return kind(hift.get(key, getattr(default, key)))

        return cls(
            in_channels=number("in_channels", int),
            base_channels=number("base_channels", int),
            nb_harmonics=number("nb_harmonics", int),
            sampling_rate=number("sampling_rate", int),
            nsf_alpha=number("nsf_alpha", float),
            nsf_sigma=number("nsf_sigma", float),
            nsf_voiced_threshold=number("nsf_voiced_threshold", float),
            upsample_rates=ints("upsample_rates"),
            upsample_kernel_sizes=ints("upsample_kernel_sizes"),
            n_fft=int(istft.get("n_fft", default.n_fft)),
            hop_len=int(istft.get("hop_len", default.hop_len)),
            resblock_kernel_sizes=ints("resblock_kernel_sizes"),
            resblock_dilation_sizes=int_lists("resblock_dilation_sizes"),
            source_resblock_kernel_sizes=ints("source_resblock_kernel_sizes"),
            source_resblock_dilation_sizes=int_lists("source_resblock_dilation_sizes"),
            lrelu_slope=number("lrelu_slope", float),
            audio_limit=number("audio_limit", float),
            conv_pre_look_right=number("conv_pre_look_right", int),
            f0_in_channels=int(f0.get("in_channels", default.f0_in_channels)),
            f0_cond_channels=int(f0.get("cond_channels", default.f0_cond_channels)),
            f0_num_class=int(f0.get("num_class", default.f0_num_class)),
        )

    def check(self) -> None:
        def bad(key: str, problem: str) -> ModelDirError:
            return ModelDirError(f"{YAML_NAME}: 'hift.{key}' {problem}")
        if self.sampling_rate == 22050:
            # The official generator switches to its non-causal sine source at 22.05 kHz (CosyVoice1).
            raise bad("sampling_rate", "is 22050: that is the CosyVoice1 vocoder, not supported here")
        if self.nb_harmonics + 1 != SINE_NOISE_COLUMNS:
            raise bad("nb_harmonics", f"is {self.nb_harmonics}; the causal sine source's fixed noise has "
                                      f"{SINE_NOISE_COLUMNS} columns, so it must be {SINE_NOISE_COLUMNS - 1}")
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise bad("upsample_kernel_sizes", "must have one entry per upsample rate")
        n_stages = len(self.upsample_rates)
        if len(self.source_resblock_kernel_sizes) != n_stages or len(self.source_resblock_dilation_sizes) != n_stages:
            raise bad("source_resblock_kernel_sizes", "must have one entry per upsample rate")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise bad("resblock_dilation_sizes", "must have one entry per resblock kernel size")
        if not all(self.resblock_dilation_sizes) or not all(self.source_resblock_dilation_sizes):
            raise bad("resblock_dilation_sizes", "must not contain an empty list of dilations")
        if self.base_channels % (2 ** n_stages):
            raise bad("base_channels", f"must be divisible by 2**{n_stages}")
        if self.f0_num_class != 1:
            raise bad("f0_predictor.num_class", "must be 1 (one F0 value per frame)")
        if self.in_channels != self.f0_in_channels:
            raise bad("f0_predictor.in_channels", "must equal hift.in_channels (both read the mel)")


@dataclass(frozen=True)
class PromptMelConfig:
    """The yaml's `feat_extractor` arguments (matcha.utils.audio.mel_spectrogram): the flow's prompt mel."""
    sample_rate: int = 24000
    n_fft: int = 1920
    hop: int = 480
    win: int = 1920
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float | None = None
    center: bool = False

    @classmethod
    def from_yaml(cls, values: dict[str, Any]) -> "PromptMelConfig":
        """From the whole yaml tree: `feat_extractor`, falling back to the top-level sample_rate."""
        return _section("feat_extractor", lambda: cls._read(values))

    @classmethod
    def _read(cls, values: dict[str, Any]) -> "PromptMelConfig":
        section = values.get("feat_extractor") or {}
        base = cls()
        fmax = section.get("fmax", base.fmax)
        return cls(sample_rate=int(section.get("sampling_rate", values.get("sample_rate", base.sample_rate))),
                   n_fft=int(section.get("n_fft", base.n_fft)),
                   hop=int(section.get("hop_size", base.hop)),
                   win=int(section.get("win_size", base.win)),
                   n_mels=int(section.get("num_mels", base.n_mels)),
                   fmin=float(section.get("fmin", base.fmin)),
                   fmax=None if fmax is None else float(fmax),
                   center=bool(section.get("center", base.center)))


def _section(name: str, read: Callable[[], T]) -> T:
    """Run one section reader; a missing key or a value of the wrong kind names the section."""
    try:
        return read()
    except ModelDirError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ModelDirError(f"{YAML_NAME}: {name} section is incomplete or malformed ({err!r})") from err


@dataclass
class ModelConfig:
    model_dir: Path
    sample_rate: int
    token_frame_rate: int
    token_mel_ratio: int
    chunk_size: int
    spk_embed_dim: int
    llm: LLMConfig
    sampling: SamplingConfig
    flow: FlowConfig
    hift: HiFTConfig
    prompt_mel: PromptMelConfig

    @property
    def qwen_dir(self) -> Path:
        """Tokenizer files and Qwen2 config.json."""
        return self.model_dir / QWEN_DIR

    @classmethod
    def from_model_dir(cls, path: str | Path) -> "ModelConfig":
        model_dir = Path(path)
        values = read_yaml(model_dir / YAML_NAME)
        qwen = read_json_object(model_dir / QWEN_DIR / QWEN_CONFIG_NAME)

        y = _Fields(YAML_NAME, values)
        llm_values = y.mapping("llm")
        tag = str(llm_values.get("_tag", ""))
        if not tag.endswith("CosyVoice3LM"):
            raise ModelDirError(f"{YAML_NAME}: 'llm' is {tag or 'untagged'!r}, expected a CosyVoice3LM "
                                f"(is this a CosyVoice2 model directory?)")
        y_llm = _Fields(YAML_NAME, llm_values, prefix="llm.")
        y_sampling = _Fields(YAML_NAME, y_llm.mapping("sampling"), prefix="llm.sampling.")
        sampling = SamplingConfig(
            top_p=y_sampling.positive_float("top_p"),
            top_k=y_sampling.positive_int("top_k"),
            win_size=y_sampling.positive_int("win_size"),
            tau_r=y_sampling.positive_float("tau_r"),
        )
        return cls(
            model_dir=model_dir,
            sample_rate=y.positive_int("sample_rate"),
            token_frame_rate=y.positive_int("token_frame_rate"),
            token_mel_ratio=y.positive_int("token_mel_ratio"),
            chunk_size=y.positive_int("chunk_size"),
            spk_embed_dim=y.positive_int("spk_embed_dim"),
            llm=_llm_config(qwen, y_llm),
            sampling=sampling,
            flow=FlowConfig.from_yaml(values),
            hift=HiFTConfig.from_yaml(values),
            prompt_mel=PromptMelConfig.from_yaml(values),
        )


def _head_dim(q: "_Fields", qwen: dict[str, Any], hidden: int, num_heads: int, num_kv_heads: int) -> int:
    if "head_dim" in qwen:
        head_dim = q.positive_int("head_dim")
    elif hidden % num_heads:
        raise q.error("hidden_size", f"{hidden} is not divisible by num_attention_heads {num_heads}")
    else:
        head_dim = hidden // num_heads
    if num_heads % num_kv_heads:
        raise q.error("num_key_value_heads", f"{num_kv_heads} does not divide num_attention_heads {num_heads}")
    if head_dim % 2:
        raise q.error("head_dim", f"{head_dim} is odd; rotary embedding needs an even head size")
    return head_dim


def _llm_config(qwen: dict[str, Any], y_llm: "_Fields") -> LLMConfig:
    """The LLM's sizes from the Qwen config, checked against the yaml's llm section."""
    q = _Fields(f"{QWEN_DIR}/{QWEN_CONFIG_NAME}", qwen)
    hidden = q.positive_int("hidden_size")
    num_heads = q.positive_int("num_attention_heads")
    num_kv_heads = q.positive_int("num_key_value_heads", default=num_heads)
    head_dim = _head_dim(q, qwen, hidden, num_heads, num_kv_heads)
    act = qwen.get("hidden_act", "silu")
    if act != "silu":
        raise q.error("hidden_act", f"{act!r} is not supported (only 'silu')")
    for name in ("llm_input_size", "llm_output_size"):
        size = y_llm.positive_int(name)
        if size != hidden:
            raise y_llm.error(name, f"{size} does not match hidden_size {hidden} in "
                                    f"{QWEN_DIR}/{QWEN_CONFIG_NAME}")
    return LLMConfig(
        hidden_size=hidden,
        num_layers=q.positive_int("num_hidden_layers"),
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        intermediate_size=q.positive_int("intermediate_size"),
        rope_theta=q.positive_float("rope_theta", default=10000.0),
        rms_norm_eps=q.positive_float("rms_norm_eps", default=1e-6),
        text_vocab_size=q.positive_int("vocab_size"),
        speech_token_size=y_llm.positive_int("speech_token_size"),
        tie_word_embeddings=bool(qwen.get("tie_word_embeddings", False)),
        max_position_embeddings=q.positive_int("max_position_embeddings", default=32768),
    )


def read_yaml(path: Path) -> dict[str, Any]:
    """The value tree of cosyvoice3.yaml; for the section readers above (and tests that edit a copy)."""
    if not path.is_file():
        raise ModelDirError(f"{path.name}: not found in {path.parent}")
    try:
        return load_yaml_values(path)
    except KeyError as err:  # a !ref to a top-level value that is not there
        raise ModelDirError(f"{path.name}: refers to {err} but does not define it") from err
    except (ValueError, TypeError) as err:
        raise ModelDirError(f"{path.name}: {err}") from err


def read_json_object(path: Path) -> dict[str, Any]:
    """A model-dir JSON file that must hold an object; any problem is a ModelDirError naming it."""
    name = f"{path.parent.name}/{path.name}"
    if not path.is_file():
        raise ModelDirError(f"{name}: not found in {path.parent.parent}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelDirError(f"{name}: cannot be read as JSON ({err})") from err
    if not isinstance(data, dict):
        raise ModelDirError(f"{name}: expected a JSON object at the top level")
    return data


class _Fields:
    """Typed reads from one mapping, with errors that name the file and the key."""

    def __init__(self, file: str, mapping: dict[str, Any], prefix: str = ""):
        self.file, self.mapping_, self.prefix = file, mapping, prefix

    def error(self, key: str, problem: str) -> ModelDirError:
        return ModelDirError(f"{self.file}: '{self.prefix}{key}' {problem}")

    def _get(self, key: str, default: Any) -> Any:
        if key in self.mapping_:
            return self.mapping_[key]
        if default is not None:
            return default
        raise self.error(key, "is missing")

    def mapping(self, key: str) -> dict[str, Any]:
        value = self._get(key, None)
        if not isinstance(value, dict):
            raise self.error(key, f"must be a mapping, got {value!r}")
        return value

    def positive_int(self, key: str, default: int | None = None) -> int:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise self.error(key, f"must be a positive integer, got {value!r}")
        return value

    def positive_float(self, key: str, default: float | None = None) -> float:
        value = self._get(key, default)
        if isinstance(value, str):  # yaml 1.1 reads "1e-06" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise self.error(key, f"must be a positive number, got {value!r}")
        return float(value)
