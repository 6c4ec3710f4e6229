"""CosyVoice3Tokenizer reproduces the official tokenizer's ids and decoded text (fixture cases)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import FIXTURE
from cosyvoice.engines.cosyvoice3.tokenizer import CosyVoice3Tokenizer
from cosyvoice.errors import ModelDirError
from cosyvoice.parity import tokenizer as tokenizer_parity
from cosyvoice.text.special_tokens import SPECIAL_TOKEN_IDS

TOKEN_DIR = FIXTURE / "CosyVoice-BlankEN"
CASES = json.loads((FIXTURE / "cases" / "tokenizer_cases.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tokenizer() -> CosyVoice3Tokenizer:
    return CosyVoice3Tokenizer(TOKEN_DIR)


def test_parity_family_passes() -> None:
    results = list(tokenizer_parity.run(FIXTURE, None))
    assert len(results) == 1 + 2 * len(CASES["cases"])
    failed = [r.line() for r in results if not r.passed]
    assert not failed, "\n".join(failed)


@pytest.mark.parametrize("case", CASES["cases"], ids=[f"case{i:02d}" for i in range(len(CASES["cases"]))])
def test_fixture_case(tokenizer: CosyVoice3Tokenizer, case: dict) -> None:
    assert tokenizer.encode(case["text"]) == case["ids"]
    assert tokenizer.decode(case["ids"]) == case["decoded_skip_special"]


def test_special_token_ids_equal_fixture(tokenizer: CosyVoice3Tokenizer) -> None:
    assert tokenizer.special_token_ids == CASES["special_token_ids"]
    assert tokenizer.special_token_ids == SPECIAL_TOKEN_IDS


def test_markup_is_one_token_and_keeps_spaces(tokenizer: CosyVoice3Tokenizer) -> None:
    ids = tokenizer.encode("a [breath] b")
    assert ids.count(SPECIAL_TOKEN_IDS["[breath]"]) == 1
    assert tokenizer.decode(ids, skip_special_tokens=False) == "a [breath] b"
    assert tokenizer.decode(ids) == "a  b"


def test_plain_text_round_trips(tokenizer: CosyVoice3Tokenizer) -> None:
    text = "Zero-shot 语音克隆, tabs\tand\nnewlines — 123."
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_tokenizer_json_is_used_when_present(tmp_path: Path, tokenizer: CosyVoice3Tokenizer) -> None:
    # A directory with only tokenizer.json (as some exports ship) must give the same ids.
    shutil.copy(TOKEN_DIR / "tokenizer_config.json", tmp_path / "tokenizer_config.json")
    tokenizer.backend.save(str(tmp_path / "tokenizer.json"))
    from_json = CosyVoice3Tokenizer(tmp_path)
    for case in CASES["cases"]:
        assert from_json.encode(case["text"]) == case["ids"]


def _token_dir_copy(tmp_path: Path) -> Path:
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(TOKEN_DIR / name, tmp_path / name)
    return tmp_path


@pytest.mark.parametrize("name", ["vocab.json", "merges.txt", "tokenizer_config.json"])
def test_missing_file_is_named(tmp_path: Path, name: str) -> None:
    token_dir = _token_dir_copy(tmp_path)
    (token_dir / name).unlink()
    with pytest.raises(ModelDirError, match=name):
        CosyVoice3Tokenizer(token_dir)


def test_vocab_without_qwen_layout_is_refused(tmp_path: Path) -> None:
    # A vocabulary of another size would shift every special id the LLM was trained with.
    token_dir = _token_dir_copy(tmp_path)
    vocab = json.loads((token_dir / "vocab.json").read_text(encoding="utf-8"))
    small = {token: index for token, index in vocab.items() if index < 1000}
    (token_dir / "vocab.json").write_text(json.dumps(small), encoding="utf-8")
    with pytest.raises(ModelDirError, match="special token '<\\|endoftext\\|>' would get id 1000"):
        CosyVoice3Tokenizer(token_dir)


def test_corrupt_vocab_is_named(tmp_path: Path) -> None:
    token_dir = _token_dir_copy(tmp_path)
    (token_dir / "vocab.json").write_text('{"a": 0,', encoding="utf-8")
    with pytest.raises(ModelDirError, match="vocab.json"):
        CosyVoice3Tokenizer(token_dir)
