"""The text frontend both engines share: check markup, normalize, apply the G2P dictionary, split.

    raw text ── parse (markup checked against what the user typed) ── normalize plain runs
             ── G2P replace dictionary on plain runs ── canonical markup ── sentence pieces

Everything before the last <|endofprompt|> is an instruction prefix: it is checked but neither
normalized nor split, and it leads every piece.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cosyvoice.errors import UserInputError
from cosyvoice.text.g2p_dict import DEFAULT_G2P_DICT, G2PDictionary
from cosyvoice.text.lang import detect_language
from cosyvoice.text.markup import Item, MarkupError, Tag, TextRun, parse, render
from cosyvoice.text.normalize import normalize_text
from cosyvoice.text.split import split_items

from cosyvoice.text.special_tokens import END_OF_PROMPT


@dataclass
class FrontendResult:
    normalized: str                 # after normalization, markup in canonical form, before the dictionary
    marked: str                     # canonical markup: what the engines receive
    pieces: list[str]               # sentence pieces of `marked`, each valid markup on its own
    notices: list[str] = field(default_factory=list)   # e.g. dictionary lines skipped
    language: str = "zh"            # detect_language(marked): "zh" | "en" | "yue" | "mixed"


def _merge_runs(items: list[Item]) -> list[Item]:
    out: list[Item] = []
    for item in items:
        if isinstance(item, TextRun) and out and isinstance(out[-1], TextRun):
            out[-1] = TextRun(out[-1].text + item.text)
        elif not (isinstance(item, TextRun) and not item.text):
            out.append(item)
    return out


def _normalize_run(text: str, lang: str) -> str:
    """Normalize one plain run; keep it as it was if normalization made it look like markup."""
    new = normalize_text(text, lang)
    if new == text:
        return text
    try:
        if all(isinstance(i, TextRun) for i in parse(new)):
            return new
    except MarkupError:
        pass
    return text


class TextFrontend:
    def __init__(self, g2p_dict_path: Path | None = DEFAULT_G2P_DICT):
        self.dictionary = G2PDictionary(g2p_dict_path)

    def process(self, text: str, *, normalize: bool = True, max_piece_chars: int = 80) -> FrontendResult:
        self.dictionary.refresh()
        text = text.strip()
        if not text:
            raise UserInputError("The text is empty: type something to read.")
        items = parse(text)

        cut = max((i + 1 for i, it in enumerate(items) if isinstance(it, Tag) and it.token == END_OF_PROMPT), default=0)
        prefix, body = items[:cut], items[cut:]

        if normalize:
            lang = detect_language(render(body))
            lang = "en" if lang == "en" else "zh"
            body = [TextRun(_normalize_run(it.text, lang)) if isinstance(it, TextRun) else it for it in body]
        body = _merge_runs(body)
        normalized = render(prefix + body)

        body = _merge_runs(self.dictionary.apply(body))
        prefix_text = render(prefix)
        marked = prefix_text + render(body)
        pieces = [prefix_text + p for p in split_items(body, max_piece_chars)]
        if not pieces:
            raise UserInputError("Nothing to read: the text has no words, only punctuation, spaces or tags.")
        for piece in pieces:        # a piece the engines could not parse back is our bug; say so now
            parse(piece)
        return FrontendResult(normalized=normalized, marked=marked, pieces=pieces,
                              notices=self.dictionary.notices, language=detect_language(marked))
