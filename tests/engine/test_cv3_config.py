"""ModelConfig: sizes come from the model directory, and a broken directory fails with a message
that names the file and what is wrong."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import FIXTURE
from cosyvoice.engines.cosyvoice3.config import ModelConfig
from cosyvoice.engines.cosyvoice3.yaml_values import load_yaml_values
from cosyvoice.errors import ModelDirError

YAML = "cosyvoice3.yaml"
QWEN_CONFIG = Path("CosyVoice-BlankEN") / "config.json"


def _copy_config_files(tmp_path: Path) -> Path:
    (tmp_path / "CosyVoice-BlankEN").mkdir()
    shutil.copy(FIXTURE / YAML, tmp_path / YAML)
    shutil.copy(FIXTURE / QWEN_CONFIG, tmp_path / QWEN_CONFIG)
    return tmp_path


def _edit_qwen_config(model_dir: Path, **changes) -> None:
    path = model_dir / QWEN_CONFIG
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


def _edit_yaml(model_dir: Path, old: str, new: str) -> None:
    path = model_dir / YAML
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_fixture_config_matches_its_files() -> None:
    cfg = ModelConfig.from_model_dir(FIXTURE)
    qwen = json.loads((FIXTURE / QWEN_CONFIG).read_text())
    values = load_yaml_values(FIXTURE / YAML)

    assert cfg.llm.hidden_size == qwen["hidden_size"] == values["llm_input_size"]
    assert cfg.llm.num_layers == qwen["num_hidden_layers"]
    assert cfg.llm.num_heads == qwen["num_attention_heads"]
    assert cfg.llm.num_kv_heads == qwen["num_key_value_heads"]
    assert cfg.llm.head_dim * cfg.llm.num_heads == qwen["hidden_size"]
    assert cfg.llm.intermediate_size == qwen["intermediate_size"]
    assert cfg.llm.rope_theta == qwen["rope_theta"]
    assert cfg.llm.rms_norm_eps == qwen["rms_norm_eps"]
    assert cfg.llm.text_vocab_size == qwen["vocab_size"]
    assert cfg.llm.tie_word_embeddings == qwen["tie_word_embeddings"]
    assert cfg.llm.speech_token_size == values["llm"]["speech_token_size"]
    assert cfg.llm.speech_vocab_size == cfg.llm.speech_token_size + 200
    # sos / eos / task_id are the first three ids after the speech tokens
    assert (cfg.llm.sos_id, cfg.llm.eos_id, cfg.llm.task_id) == tuple(cfg.llm.speech_token_size + i for i in range(3))

    for key in ("top_p", "top_k", "win_size", "tau_r"):
        assert getattr(cfg.sampling, key) == values["llm"]["sampling"][key]
    for key in ("sample_rate", "token_frame_rate", "token_mel_ratio", "chunk_size", "spk_embed_dim"):
        assert getattr(cfg, key) == values[key]
    # the flow, vocoder and prompt-mel sections are read here too, typed, so no module below reads the yaml
    estimator = values["flow"]["decoder"]["estimator"]
    assert (cfg.flow.dit.dim, cfg.flow.dit.depth, cfg.flow.dit.heads) == \
        (estimator["dim"], estimator["depth"], estimator["heads"])
    assert cfg.flow.vocab_size == values["flow"]["vocab_size"]
    assert cfg.flow.lookahead_channels == values["flow"]["pre_lookahead_layer"]["channels"]
    assert cfg.hift.base_channels == values["hift"]["base_channels"]
    assert cfg.hift.f0_cond_channels == values["hift"]["f0_predictor"]["cond_channels"]
    assert cfg.hift.samples_per_frame == 480
    assert (cfg.prompt_mel.n_mels, cfg.prompt_mel.hop) == \
        (values["feat_extractor"]["num_mels"], values["feat_extractor"]["hop_size"])


def test_sizes_follow_the_directory_not_constants(tmp_path: Path) -> None:
    model_dir = _copy_config_files(tmp_path)
    _edit_qwen_config(model_dir, hidden_size=48, num_attention_heads=6, num_key_value_heads=2, num_hidden_layers=5)
    _edit_yaml(model_dir, "llm_input_size: 16", "llm_input_size: 48")
    _edit_yaml(model_dir, "llm_output_size: 16", "llm_output_size: 48")
    _edit_yaml(model_dir, "top_k: 25", "top_k: 7")
    cfg = ModelConfig.from_model_dir(model_dir)
    assert (cfg.llm.hidden_size, cfg.llm.num_heads, cfg.llm.num_kv_heads, cfg.llm.head_dim, cfg.llm.num_layers) == \
        (48, 6, 2, 8, 5)
    assert cfg.sampling.top_k == 7


def test_explicit_head_dim_is_used(tmp_path: Path) -> None:
    model_dir = _copy_config_files(tmp_path)
    _edit_qwen_config(model_dir, head_dim=12)
    assert ModelConfig.from_model_dir(model_dir).llm.head_dim == 12


@pytest.mark.parametrize("missing", [YAML, str(QWEN_CONFIG)])
def test_missing_file_is_named(tmp_path: Path, missing: str) -> None:
    model_dir = _copy_config_files(tmp_path)
    (model_dir / missing).unlink()
    with pytest.raises(ModelDirError, match=Path(missing).name):
        ModelConfig.from_model_dir(model_dir)


def test_unparsable_yaml(tmp_path: Path) -> None:
    model_dir = _copy_config_files(tmp_path)
    (model_dir / YAML).write_text("sample_rate: [24000\nllm: {")
    with pytest.raises(ModelDirError, match=YAML):
        ModelConfig.from_model_dir(model_dir)


def test_unparsable_qwen_config(tmp_path: Path) -> None:
    model_dir = _copy_config_files(tmp_path)
    (model_dir / QWEN_CONFIG).write_text('{"hidden_size": 16,')
    with pytest.raises(ModelDirError, match="config.json.*JSON"):
        ModelConfig.from_model_dir(model_dir)


def test_missing_qwen_field_is_named(tmp_path: Path) -> None:
    model_dir = _copy_config_files(tmp_path)
    _edit_qwen_config(model_dir, num_hidden_layers=None)
    with pytest.raises(ModelDirError, match=r"config.json.*'num_hidden_layers' is missing"):
        ModelConfig.from_model_dir(model_dir)


def test_missing_yaml_field_is_named(tmp_path: Path) -> None:
    model_dir = _copy_config_files(tmp_path)
    _edit_yaml(model_dir, "    speech_token_size: 6561\n", "")
    with pytest.raises(ModelDirError, match=r"cosyvoice3.yaml.*'llm.speech_token_size' is missing"):
        ModelConfig.from_model_dir(model_dir)


def test_missing_referenced_yaml_value_is_named(tmp_path: Path) -> None:
    model_dir = _copy_config_files(tmp_path)
    _edit_yaml(model_dir, "token_mel_ratio: 2\n", "")
    with pytest.raises(ModelDirError, match=r"cosyvoice3.yaml: refers to 'token_mel_ratio'"):
        ModelConfig.from_model_dir(model_dir)


@pytest.mark.parametrize("old,new,section", [
    ("    vocab_size: 6561\n", "", "flow"),
    ("base_channels: 64", "base_channels: many", "hift"),
    ("num_mels: 80", "num_mels: [80]", "feat_extractor"),
])
def test_broken_model_section_is_named(tmp_path: Path, old: str, new: str, section: str) -> None:
    model_dir = _copy_config_files(tmp_path)
    _edit_yaml(model_dir, old, new)
    with pytest.raises(ModelDirError, match=rf"cosyvoice3.yaml: {section} section is incomplete or malformed"):
        ModelConfig.from_model_dir(model_dir)


def test_wrong_typed_value(tmp_path: Path) -> None:
    model_dir = _copy_config_files(tmp_path)
    _edit_yaml(model_dir, "sample_rate: 24000", "sample_rate: fast")
    with pytest.raises(ModelDirError, match=r"'sample_rate' must be a positive integer, got 'fast'"):
        ModelConfig.from_model_dir(model_dir)


def test_llm_size_disagreeing_with_qwen_config(tmp_path: Path) -> None:
    model_dir = _copy_config_files(tmp_path)
    _edit_qwen_config(model_dir, hidden_size=32, num_attention_heads=4)
    with pytest.raises(ModelDirError, match=r"'llm.llm_input_size' 16 does not match hidden_size 32"):
        ModelConfig.from_model_dir(model_dir)


def test_heads_not_dividing(tmp_path: Path) -> None:
    model_dir = _copy_config_files(tmp_path)
    _edit_qwen_config(model_dir, num_attention_heads=3)
    with pytest.raises(ModelDirError, match="not divisible by num_attention_heads 3"):
        ModelConfig.from_model_dir(model_dir)


def test_cosyvoice2_yaml_is_refused(tmp_path: Path) -> None:
    model_dir = _copy_config_files(tmp_path)
    _edit_yaml(model_dir, "cosyvoice.llm.llm.CosyVoice3LM", "cosyvoice.llm.llm.Qwen2LM")
    with pytest.raises(ModelDirError, match="expected a CosyVoice3LM"):
        ModelConfig.from_model_dir(model_dir)
