"""Configuration of a CosyVoice3 model directory as plain dataclasses.

Sizes come from the directory itself (cosyvoice3.yaml and CosyVoice-BlankEN/config.json), never
from constants here, so a tiny test model and the released 0.5B model load through the same path.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cosyvoice.errors import ModelDirError
from cosyvoice.engines.cosyvoice3.yaml_values import load_yaml_values

YAML_NAME = "cosyvoice3.yaml"
QWEN_DIR_NAME = "CosyVoice-BlankEN"
QWEN_CONFIG_NAME = "config.json"

# CosyVoice3LM reserves 200 ids after the speech tokens: sos, eos, task_id, fill, then unused.
EXTRA_SPEECH_IDS = 200


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

    @property
    def fill_id(self) -> int:
        return self.speech_token_size + 3

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
    values: dict[str, Any] = field(repr=False)   # whole yaml tree: values["flow"], values["hift"], ...

    @property
    def qwen_dir(self) -> Path:
        """Tokenizer files and Qwen2 config.json."""
        return self.model_dir / QWEN_DIR_NAME

    @classmethod
    def from_model_dir(cls, path: str | Path) -> "ModelConfig":
        model_dir = Path(path)
        values = _read_yaml(model_dir / YAML_NAME)
        qwen = read_json_object(model_dir / QWEN_DIR_NAME / QWEN_CONFIG_NAME)

        y = _Fields(YAML_NAME, values)
        llm_values = y.mapping("llm")
        tag = str(llm_values.get("_tag", ""))
        if not tag.endswith("CosyVoice3LM"):
            raise ModelDirError(f"{YAML_NAME}: 'llm' is {tag or 'untagged'!r}, expected a CosyVoice3LM "
                                f"(is this a CosyVoice2 model directory?)")
        y_llm = _Fields(YAML_NAME, llm_values, prefix="llm.")
        sampling_values = y_llm.mapping("sampling")
        y_sampling = _Fields(YAML_NAME, sampling_values, prefix="llm.sampling.")

        q = _Fields(f"{QWEN_DIR_NAME}/{QWEN_CONFIG_NAME}", qwen)
        hidden = q.positive_int("hidden_size")
        num_heads = q.positive_int("num_attention_heads")
        num_kv_heads = q.positive_int("num_key_value_heads", default=num_heads)
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
        act = qwen.get("hidden_act", "silu")
        if act != "silu":
            raise q.error("hidden_act", f"{act!r} is not supported (only 'silu')")

        llm = LLMConfig(
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
        for name in ("llm_input_size", "llm_output_size"):
            size = y_llm.positive_int(name)
            if size != hidden:
                raise y_llm.error(name, f"{size} does not match hidden_size {hidden} in "
                                        f"{QWEN_DIR_NAME}/{QWEN_CONFIG_NAME}")

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
            llm=llm,
            sampling=sampling,
            values=values,
        )


def _read_yaml(path: Path) -> dict[str, Any]:
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
