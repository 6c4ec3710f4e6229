"""Marked text reaches the neural engine as the official tokenizer's special tokens (fixture ids)."""
from __future__ import annotations

import json

import pytest

from conftest import FIXTURE
from cosyvoice.engines.cosyvoice3.tokenizer import CosyVoice3Tokenizer
from cosyvoice.text.frontend import TextFrontend

CASES = {c["text"]: c["ids"] for c in json.loads((FIXTURE / "cases" / "tokenizer_cases.json").read_text())["cases"]}

# Friendly spellings a user types, and the official canonical text they must become.
FRIENDLY = {
    "{hao4}人好事": "[h][ào]人好事",
    "[hao4]人好事": "[h][ào]人好事",
    "minute {M AY0 N UW1 T} and {M IH1 N AH0 T}": "minute [M][AY0][N][UW1][T] and [M][IH1][N][AH0][T]",
    "{zhong1 guo2} 中国 {lv4}": "[zh][ōng][g][uó] 中国 [l][ǜ]",
}


# A bare [ǜ] is a token the tokenizer knows but not a syllable anyone can say (ü needs l/n before it);
# the frontend reports it, so that one fixture string is only a tokenizer case.
IMPOSSIBLE_SYLLABLE_CASE = "[zh][ōng][g][uó] 中国 [ǜ]"


def frontend(tmp_path_factory) -> TextFrontend:
    empty = tmp_path_factory.mktemp("dict") / "empty.jsonl"
    empty.write_text("")
    return TextFrontend(empty)       # no forced readings: the text must pass through as written


@pytest.fixture(scope="module")
def plain_frontend(tmp_path_factory):
    return frontend(tmp_path_factory)


@pytest.fixture(scope="module")
def tokenizer():
    return CosyVoice3Tokenizer(FIXTURE / "CosyVoice-BlankEN")


@pytest.mark.parametrize("text", [t for t in CASES if ("[" in t or "<strong>" in t) and t != IMPOSSIBLE_SYLLABLE_CASE])
def test_canonical_markup_passes_the_frontend_unchanged_and_tokenizes_officially(plain_frontend, tokenizer, text):
    marked = plain_frontend.process(text, normalize=False, max_piece_chars=10**6).marked
    assert marked == text
    assert tokenizer.encode(marked) == CASES[text]


@pytest.mark.parametrize("friendly,canonical", FRIENDLY.items())
def test_friendly_forms_become_the_same_tokens(plain_frontend, tokenizer, friendly, canonical):
    marked = plain_frontend.process(friendly, normalize=False, max_piece_chars=10**6).marked
    assert marked == canonical
    if canonical in CASES:
        assert tokenizer.encode(marked) == CASES[canonical]
    else:
        ids = tokenizer.encode(marked)
        assert tokenizer.special_token_ids["[l]"] in ids and tokenizer.special_token_ids["[ǜ]"] in ids


def test_impossible_bare_final_is_reported(plain_frontend):
    from cosyvoice.text.markup import MarkupError

    with pytest.raises(MarkupError, match=r"\[ǜ\]"):
        plain_frontend.process(IMPOSSIBLE_SYLLABLE_CASE, normalize=False)
