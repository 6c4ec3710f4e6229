"""campplus / speech tokenizer sessions, and the tiny onnx model dir the end-to-end tests use."""
from __future__ import annotations

import math
import os
import subprocess

import onnx
import pytest
import torch

import tiny_onnx
from cosyvoice.engines.cosyvoice3 import features
from cosyvoice.engines.cosyvoice3.model_dir import REQUIRED_FILES, is_complete
from cosyvoice.engines.cosyvoice3.onnx_models import CampPlus, SpeechTokenizer
from cosyvoice.errors import ModelDirError, UserInputError
from cosyvoice.parity import load_case
from conftest import AUDIO, FIXTURE, PYTHON, ROOT


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    torch.set_num_threads(2)
    return tiny_onnx.make_tiny_model_dir(FIXTURE, tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def case() -> dict:
    return load_case(FIXTURE, "frontend_features.pt")


def test_tiny_model_dir_is_complete_and_links_the_fixture(tiny_dir):
    assert is_complete(tiny_dir)
    for name in ("llm.pt", "flow.pt", "hift.pt", "cosyvoice3.yaml", "CosyVoice-BlankEN"):
        assert (tiny_dir / name).is_symlink()
        assert (tiny_dir / name).resolve() == (FIXTURE / name).resolve()
    assert not (tiny_dir / "cases").exists()
    for name in ("campplus.onnx", "speech_tokenizer_v3.onnx"):
        assert not (tiny_dir / name).is_symlink() and (tiny_dir / name).stat().st_size > 0


def test_tiny_models_have_the_released_signatures(tiny_dir):
    campplus = onnx.load(str(tiny_dir / "campplus.onnx")).graph
    assert [(i.name, i.type.tensor_type.elem_type) for i in campplus.input] == [("input", onnx.TensorProto.FLOAT)]
    assert [d.dim_value for d in campplus.output[0].type.tensor_type.shape.dim][1:] == [192]
    tokenizer = onnx.load(str(tiny_dir / "speech_tokenizer_v3.onnx")).graph
    assert [(i.name, i.type.tensor_type.elem_type) for i in tokenizer.input] == [
        ("feats", onnx.TensorProto.FLOAT), ("feats_length", onnx.TensorProto.INT32)]
    assert tokenizer.output[0].name == "indices"


def test_campplus_embeds_a_prompt_deterministically(tiny_dir, case):
    model = CampPlus(tiny_dir / "campplus.onnx", "cpu")
    assert "CPUExecutionProvider" in model.providers
    embedding = model.embed(case["campplus_fbank"])
    assert embedding.shape == (1, 192) and embedding.dtype == torch.float32
    assert torch.isfinite(embedding).all() and embedding.abs().sum() > 0
    assert torch.equal(model.embed(case["campplus_fbank"][0]), embedding)       # (T, 80) is accepted too

    other = features.campplus_input(features.kaldi_fbank(features.load_mono(str(AUDIO / "f5_basic_ref_en.wav"), 16000)))
    assert not torch.allclose(model.embed(other), embedding)


def test_speech_tokenizer_gives_25_tokens_per_second(tiny_dir, case):
    model = SpeechTokenizer(tiny_dir / "speech_tokenizer_v3.onnx", "cpu")
    log_mel = case["whisper_logmel"]
    tokens = model.tokens(log_mel, case["whisper_logmel_len"])
    assert tokens.shape == (1, math.ceil(log_mel.shape[2] / 4)) and tokens.dtype == torch.int64
    assert 0 <= tokens.min() and tokens.max() < 6561
    assert len(set(tokens[0].tolist())) > 10
    assert torch.equal(model.tokens(log_mel), tokens)
    assert model.tokens(log_mel, 100).shape == (1, 25)
    for frames in (1, 3, 4, 5, 9):
        assert model.tokens(log_mel[:, :, :frames], frames).shape == (1, math.ceil(frames / 4))


def test_speech_tokenizer_refuses_prompts_over_30_seconds(tiny_dir):
    model = SpeechTokenizer(tiny_dir / "speech_tokenizer_v3.onnx", "cpu")
    assert model.tokens(torch.zeros(1, 128, 3000)).shape == (1, 750)
    with pytest.raises(UserInputError, match="30 s"):
        model.tokens(torch.zeros(1, 128, 3001))


def test_input_names_are_read_from_the_session(tiny_dir, tmp_path):
    model = onnx.load(str(tiny_dir / "campplus.onnx"))
    model.graph.input[0].name = "fbank"
    for node in model.graph.node:
        node.input[:] = ["fbank" if name == "input" else name for name in node.input]
    onnx.save(model, str(tmp_path / "campplus.onnx"))
    renamed = CampPlus(tmp_path / "campplus.onnx")
    original = CampPlus(tiny_dir / "campplus.onnx")
    fbank = torch.randn(1, 50, 80)
    assert renamed.input_names == ["fbank"]
    assert torch.equal(renamed.embed(fbank), original.embed(fbank))


def test_missing_or_corrupt_onnx_is_a_model_dir_error(tmp_path):
    with pytest.raises(ModelDirError, match="campplus.onnx"):
        CampPlus(tmp_path / "campplus.onnx")
    (tmp_path / "speech_tokenizer_v3.onnx").write_bytes(b"<html>rate limited</html>")
    with pytest.raises(ModelDirError, match="speech_tokenizer_v3.onnx.*download"):
        SpeechTokenizer(tmp_path / "speech_tokenizer_v3.onnx")


def test_cuda_request_without_cuda_runs_on_cpu(tiny_dir):
    model = CampPlus(tiny_dir / "campplus.onnx", "cuda:0")
    assert model.providers[-1] == "CPUExecutionProvider"
    assert model.embed(torch.randn(1, 20, 80)).shape == (1, 192)


def test_cli_makes_a_complete_model_dir(tmp_path):
    out = tmp_path / "tiny"
    done = subprocess.run([PYTHON, "tests/tiny_onnx.py", "--fixture", str(FIXTURE),
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="2"))
    assert done.returncode == 0, done.stderr
    assert all((out / name).is_file() for name in REQUIRED_FILES)
    # Running it again over the same dir refreshes it instead of failing.
    assert tiny_onnx.main(["--fixture", str(FIXTURE), "--out", str(out)]) == 0
    assert tiny_onnx.main(["--fixture", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 1
