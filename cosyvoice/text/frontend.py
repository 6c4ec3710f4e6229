"""The text frontend both engines share: check markup, normalize, apply the G2P dictionary, pack.

    raw text ── parse (markup and pauses checked against what the user typed) ── normalize plain runs
             ── G2P replace dictionary on plain runs ── canonical markup ── pieces and pauses

Pieces are packed as the official CosyVoice frontend packs them (see text.split): consecutive
sentences share a piece up to ~80 units, zh counted in characters, en in the model's tokenizer
tokens. [pause:0.8] / <break time="800ms"/> end a piece and come back as Pause items; they never
appear in a piece or in `marked`.

Everything before the last <|endofprompt|> is an instruction prefix: it is checked but neither
normalized nor split, and it leads every piece.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from cosyvoice.errors import UserInputError
from cosyvoice.text.g2p_dict import DEFAULT_G2P_DICT, G2PDictionary
from cosyvoice.text.lang import detect_language
from cosyvoice.text.markup import Item, MarkupError, Pause, Tag, TextRun, parse, render
from cosyvoice.text.normalize import normalize_text
from cosyvoice.text.split import (DEFAULT_MAX_PIECE_UNITS, DEFAULT_MAX_SENTENCE_UNITS, Packing, Piece, TokenCounter,
                                  split_items)

from cosyvoice.text.special_tokens import END_OF_PROMPT


@dataclass
class FrontendResult:
    normalized: str                 # after normalization, canonical markup and pauses, before the dictionary
    marked: str                     # canonical markup the engines read, pauses left out
    items: list[str | Pause]        # pieces (valid markup each, instruction prefix included) and pauses, in order
    piece_units: list[int]          # length of each piece as packed, in `unit` (prefix not counted)
    unit: str = "characters"        # "characters" | "tokens" | "estimated tokens"
    notices: list[str] = field(default_factory=list)   # e.g. dictionary lines skipped
    language: str = "zh"            # of the text to read (instruction aside): "zh" | "en" | "yue" | "mixed"

    @property
    def pieces(self) -> list[str]:
        """The text pieces only, in order: what the engine synthesises one at a time."""
        return [item for item in self.items if isinstance(item, str)]

    @property
    def pauses(self) -> list[Pause]:
        return [item for item in self.items if isinstance(item, Pause)]


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


def _unreadable(items: list[Item]) -> str:
    """Letters and symbols in the text that neither voice reads (emoji, Arabic, ...), for the message."""
    seen: list[str] = []
    for item in items:
        if isinstance(item, TextRun):
            for ch in item.text:
                category = unicodedata.category(ch)
                if (category[0] in "LN" or category == "So") and ch not in seen:
                    seen.append(ch)
    return "".join(seen[:8])


class TextFrontend:
    """Text -> FrontendResult for every engine.

    count_tokens: the active model's tokenizer length, e.g. `lambda s: len(tokenizer.encode(s))`
        for CosyVoice3; English pieces are measured with it. None (lite engine): English length is
        estimated with text.split.estimate_tokens (about one token per word, more for long words).
    max_sentence_units: the longest piece the LLM takes well in one go; only a sentence longer than
        this is cut inside (clauses, then words, then anywhere). Default 200 units (~40 s of speech).
    Both are plain attributes, so an engine can set them once it has loaded.
    """

    def __init__(self, g2p_dict_path: Path | None = DEFAULT_G2P_DICT, *,
                 count_tokens: TokenCounter | None = None,
                 max_sentence_units: int = DEFAULT_MAX_SENTENCE_UNITS):
        self.dictionary = G2PDictionary(g2p_dict_path)
        self.count_tokens = count_tokens
        self.max_sentence_units = max_sentence_units

    def process(self, text: str, *, normalize: bool = True,
                max_piece_units: int = DEFAULT_MAX_PIECE_UNITS, min_piece_units: int | None = None,
                merge_units: int | None = None, comma_split: bool = False,
                max_piece_chars: int | None = None) -> FrontendResult:
        """Check, normalize, apply the dictionary and pack `text`.

        max/min/merge units are the official token_max_n/token_min_n/merge_len (80/60/20; min and
        merge default to 3/4 and 1/4 of max). comma_split also ends sentences at ，/, as the
        official option does. max_piece_chars is the former name of max_piece_units.
        Raises ValueError for empty text (the caller checks that), UserInputError (MarkupError)
        for markup or pauses it cannot take, or text with nothing the voices can read.
        """
        if max_piece_chars is not None:
            max_piece_units = max_piece_chars
        self.dictionary.refresh()
        text = text.strip()
        if not text:
            raise ValueError("TextFrontend.process needs non-empty text; the caller tells the user.")
        items = parse(text)

        cut = max((i + 1 for i, it in enumerate(items) if isinstance(it, Tag) and it.token == END_OF_PROMPT), default=0)
        prefix, body = items[:cut], items[cut:]
        if any(isinstance(it, Pause) for it in prefix):
            raise UserInputError("A pause cannot stand in the instruction before <|endofprompt|>; "
                                 "put it in the text to read, after <|endofprompt|>.")

        if normalize:
            lang = detect_language(render(body))
            lang = "en" if lang == "en" else "zh"
            body = [TextRun(_normalize_run(it.text, lang)) if isinstance(it, TextRun) else it for it in body]
        body = _merge_runs(body)
        normalized = render(prefix + body)

        body = _merge_runs(self.dictionary.apply(body))
        prefix_text = render(prefix)
        spoken = render([it for it in body if not isinstance(it, Pause)])
        marked = prefix_text + spoken
        language = detect_language(spoken)     # the instruction's language does not decide the counting
        rules = Packing(max_piece_units=max(1, max_piece_units), min_piece_units=min_piece_units,
                        merge_units=merge_units, max_sentence_units=self.max_sentence_units,
                        comma_split=comma_split)
        packed = split_items(body, language, rules, self.count_tokens)
        pieces = [p for p in packed if isinstance(p, Piece)]
        if not pieces:
            odd = _unreadable(body)
            if odd:
                raise UserInputError(f'Nothing to read: this text has no Chinese or English words the voices '
                                     f'can read, only "{odd}" (emoji, or a script such as Arabic). '
                                     f'Write it in Chinese or English.')
            raise UserInputError("Nothing to read: the text has no words, only punctuation, spaces, pauses or tags.")
        for piece in pieces:        # a piece the engines could not parse back is our bug; say so now
            parse(piece.text)
        out: list[str | Pause] = [prefix_text + p.text if isinstance(p, Piece) else p for p in packed]
        unit = "characters" if language != "en" else ("tokens" if self.count_tokens else "estimated tokens")
        return FrontendResult(normalized=normalized, marked=marked, items=out,
                              piece_units=[p.units for p in pieces], unit=unit,
                              notices=self.dictionary.notices, language=language)


def format_preview(result: FrontendResult) -> str:
    """What the frontend made of a text, as plain lines (show it in a monospace box; in Markdown
    wrap it in a code fence, or tags such as <strong> would render as HTML)."""
    pause_count = len(result.pauses)
    pauses = f", {pause_count} pause{'s' if pause_count != 1 else ''}" if pause_count else ""
    lines = [f"normalized: {result.normalized}",
             f"markup:     {result.marked}",
             f"language:   {result.language} (pieces counted in {result.unit})",
             f"pieces:     {len(result.pieces)}{pauses}"]
    width = len(str(len(result.pieces)))
    unit_width = len(str(max(result.piece_units, default=0)))
    number = 0
    for item in result.items:
        if isinstance(item, Pause):
            lines.append(f"  {'':>{width}}  ‖ pause {item.seconds:g} s")
        else:
            lines.append(f"  {number + 1:>{width}}. ({result.piece_units[number]:>{unit_width}}) {item}")
            number += 1
    return "\n".join(lines)
