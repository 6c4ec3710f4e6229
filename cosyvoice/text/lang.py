"""Which language a piece of (marked) text is in, for engines that pick a reading per language."""
from __future__ import annotations

import re

from cosyvoice.text.markup import CmuWord, PinyinSyllable, TextRun, parse, MarkupError

# Characters written in Cantonese and (almost) never in Mandarin text.
CANTONESE_CHARS = set("嘅咗喺哋冇嚟佢唔嘢啲噉畀睇攞嗰靚冚乜揾咩嘞啱嘥攰嚿餸瞓")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")


def detect_language(text: str) -> str:
    """"zh" | "en" | "yue" | "mixed": Han and Latin letters both present is "mixed"; a Cantonese
    character makes Han text "yue"; text with neither counts as "zh"."""
    try:
        items = parse(text)
    except MarkupError:
        items = [TextRun(text)]
    han = latin = 0
    cantonese = False
    for item in items:
        if isinstance(item, TextRun):
            han += len(_HAN.findall(item.text))
            latin += len(_LATIN.findall(item.text))
            cantonese = cantonese or any(ch in CANTONESE_CHARS for ch in item.text)
        elif isinstance(item, PinyinSyllable):
            han += 1
        elif isinstance(item, CmuWord):
            latin += len(item.phones)
    if han and latin:
        return "mixed"
    if han:
        return "yue" if cantonese else "zh"
    if latin:
        return "en"
    return "zh"
