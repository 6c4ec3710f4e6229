"""Pronunciation markup: the data types both engines consume.

(Parsing, checking and conversion are filled in by the text frontend.)
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TextRun:
    text: str                       # plain text to be read normally


@dataclass(frozen=True)
class PinyinSyllable:
    initial: str                    # "h", "zh", "y" ... or "" for a bare final such as [ài]
    final: str                      # tone-marked final as in the tokenizer: "ào", "óng", "vè", "ǜ"
    numeric: str                    # the same syllable in numeric-tone form: "hao4", "lv4", "ma5"


@dataclass(frozen=True)
class CmuWord:
    phones: tuple[str, ...]         # ("M", "AY0", "N", "UW1", "T")


@dataclass(frozen=True)
class Tag:
    token: str                      # exactly as the tokenizer knows it: "[breath]", "<strong>", "<|endofprompt|>"


Item = TextRun | PinyinSyllable | CmuWord | Tag
