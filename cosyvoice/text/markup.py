"""Pronunciation markup: the data types both engines consume, and the parser that checks it.

Canonical form (what the CosyVoice3 tokenizer knows as special tokens):
  pinyin   [h][ào]           an initial token then a tone-marked final token; zero-initial
                             syllables use y/w as the initial ([y][ào], [w][ǔ]) or, for a/o/e
                             syllables, a bare final ([ài], [ér]).
  CMU      [M][AY0][N][UW1][T]
  tags     [breath] [laughter] ... <strong>…</strong> <laughter>…</laughter> <|endofprompt|>
  pauses   [pause:0.8]  <break time="800ms"/>  <break time="1.5s"/>   (0.05–10 s of silence;
           the frontend cuts the text there, so no pause ever reaches an engine as text)

Friendlier input accepted by `parse` and rewritten by `to_markup`:
  {hao4} [hao4] [hào] {chong2 qing4} [lv4] [lü4] [ma5] [ma0]    numeric or tone-marked pinyin
  {M AY0 N UW1 T}                                                ARPAbet word

Bracketed text that does not look like markup ([1], [注], 【重要】, [Note]) stays plain text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from cosyvoice.errors import UserInputError
from cosyvoice.text.special_tokens import CMU_PHONES, PINYIN_PIECES, TAG_TOKENS


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


@dataclass(frozen=True)
class Pause:
    seconds: float                  # silence the service inserts between the pieces around it


Item = TextRun | PinyinSyllable | CmuWord | Tag | Pause

PAUSE_MIN_SECONDS = 0.05
PAUSE_MAX_SECONDS = 10.0
PAUSE_FORMS = '[pause:0.8] (seconds) or <break time="800ms"/> (also time="1.5s")'


class MarkupError(UserInputError):
    """Markup the tokenizer cannot take; the message quotes the piece and its 1-based position."""

    def __init__(self, message: str, piece: str = "", position: int = 0):
        super().__init__(message)
        self.piece = piece
        self.position = position


# --- token tables, all derived from the tokenizer's list -------------------------------------

_CONSONANTS = set("bcdfghjklmnpqrstwxyz")
PINYIN_INITIALS = frozenset(p for p in PINYIN_PIECES if set(p) <= _CONSONANTS)
PINYIN_FINALS = frozenset(p for p in PINYIN_PIECES if p not in PINYIN_INITIALS)
CMU_PHONE_SET = frozenset(CMU_PHONES)
TAG_SET = frozenset(TAG_TOKENS)
PAIRED_TAGS = {"<strong>": "</strong>", "<laughter>": "</laughter>"}
_CLOSING_TAGS = {close: open_ for open_, close in PAIRED_TAGS.items()}

# tone-marked vowel -> (plain vowel, tone)
_TONE_MARKS: dict[str, tuple[str, int]] = {}
for _plain, _marked in (("a", "āáǎà"), ("e", "ēéěè"), ("i", "īíǐì"), ("o", "ōóǒò"),
                        ("u", "ūúǔù"), ("ü", "ǖǘǚǜ")):
    for _tone, _ch in enumerate(_marked, start=1):
        _TONE_MARKS[_ch] = (_plain, _tone)
_MARK_OF = {(plain, tone): ch for ch, (plain, tone) in _TONE_MARKS.items()}
_PINYIN_LETTERS = set("abcdefghijklmnopqrstuvwxyzü") | set(_TONE_MARKS)


# --- syllables ------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def mandarin_syllables() -> frozenset[str]:
    """Every toneless Mandarin syllable pypinyin knows, spelled with v for ü ("lv", "nve", "ju")."""
    from pypinyin.pinyin_dict import pinyin_dict

    readings: set[str] = set()
    for value in pinyin_dict.values():
        readings.update(value.split(","))
    bases = set()
    for reading in readings:
        split = _split_tone(reading)
        if split is not None:
            bases.add(split[0])
    return frozenset(bases)


def _split_tone(marked: str) -> tuple[str, int] | None:
    """"hào" -> ("hao", 4), "lüè" -> ("lve", 4), "ma" -> ("ma", 5); None for non-pinyin letters."""
    tone = 5
    letters = []
    for ch in marked:
        if ch in _TONE_MARKS:
            plain, tone = _TONE_MARKS[ch]
            letters.append(plain)
        elif ch in _PINYIN_LETTERS:
            letters.append(ch)
        else:
            return None
    return _spell_base("".join(letters)), tone


def _spell_base(letters: str) -> str:
    """One spelling per syllable: ü written v, and the u of ju/qu/xu/yu kept as u."""
    base = letters.replace("ü", "v")
    if base[:1] in ("j", "q", "x", "y") and base[1:2] == "v":
        base = base[0] + "u" + base[2:]
    return base


def _initial_of(base: str) -> str:
    for size in (2, 1):
        head = base[:size]
        if head in PINYIN_INITIALS and len(base) > size and base[size] in "aeiouv":
            return head
    return ""


def _mark_tone(final: str, tone: int) -> str:
    """Put the tone mark on the right vowel of a toneless final ("iao", 4) -> "iào"."""
    if tone == 5:
        return final
    if "a" in final:
        at = final.index("a")
    elif "e" in final:
        at = final.index("e")
    elif "ou" in final:
        at = final.index("o")
    else:
        at = max(final.rfind(v) for v in "iouv")
        if at < 0:                      # m, n, ng, hm, hng: no vowel to carry the mark
            return f"{final}{tone}"
    vowel = "ü" if final[at] == "v" else final[at]
    return final[:at] + _MARK_OF[(vowel, tone)] + final[at + 1:]


def _final_token(final: str, tone: int) -> str:
    """Tokenizer spelling of a final: tone mark placed, an unmarked ü left as v ("ve" 4 -> "vè")."""
    return _mark_tone(final, tone)


def syllable(numeric: str, piece: str | None = None, position: int = 0) -> PinyinSyllable:
    """"hao4" / "lv4" / "lü4" / "ma5" / "ma0" -> PinyinSyllable, or MarkupError.

    Raises when the syllable is not Mandarin, or when the tokenizer has no tokens for it
    (e.g. neutral-tone "xie5", toneless "er", "n2").
    """
    piece = piece if piece is not None else numeric
    m = re.fullmatch(r"([a-zü]+)([0-5])", numeric)
    if m is None:
        raise MarkupError(f'"{piece}" at character {position} is not numeric pinyin like hao4 or lv4.',
                          piece, position)
    base = _spell_base(m.group(1))
    tone = int(m.group(2)) or 5
    return _syllable_from_base(base, tone, piece, position)


def syllable_from_marked(marked: str, piece: str | None = None, position: int = 0) -> PinyinSyllable:
    """Tone-marked pinyin ("hào", "lüè", "ma") -> PinyinSyllable, or MarkupError."""
    piece = piece if piece is not None else marked
    split = _split_tone(marked)
    if split is None:
        raise MarkupError(f'"{piece}" at character {position} cannot be expressed with the '
                          f"tokenizer's pinyin tokens.", piece, position)
    return _syllable_from_base(split[0], split[1], piece, position)


def _syllable_from_base(base: str, tone: int, piece: str, position: int) -> PinyinSyllable:
    numeric = f"{base}{tone}"
    if base not in mandarin_syllables():
        hint = ""
        if base[:1] in ("i", "u", "v") and len(base) > 1:
            hint = " Zero-initial syllables are written with y/w, e.g. [y][ào] for yao4, [w][ǔ] for wu3."
        raise MarkupError(f'"{piece}" at character {position} is not a Mandarin syllable ({numeric}).{hint}',
                          piece, position)
    initial = _initial_of(base)
    final = _final_token(base[len(initial):], tone)
    if final not in PINYIN_FINALS:
        missing = f"no token [{final}]" if set(final) & set("aeiouv") | set(_TONE_MARKS) & set(final) \
            else "no tokens for this syllable"
        raise MarkupError(f'"{piece}" at character {position} ({numeric}) cannot be expressed: the '
                          f"tokenizer has {missing}. Use another tone or write the character itself.",
                          piece, position)
    return PinyinSyllable(initial, final, numeric)


def _syllable_from_tokens(initial: str, final: str, piece: str, position: int) -> PinyinSyllable:
    """Check an [initial][final] pair (initial may be "") names a real syllable; canonicalise it."""
    split = _split_tone(final.replace("v", "ü"))
    if split is None:
        raise MarkupError(f'"{piece}" at character {position} is not a pinyin final.', piece, position)
    base, tone = split
    return _syllable_from_base(_spell_base(initial + base), tone, piece, position)


# --- scanning -------------------------------------------------------------------------------

_CANDIDATE = re.compile(r"""
    (?P<pause>(?i:\[\s*pause\b[^\[\]\n]{0,40}\]|<\s*break\b[^<>\n]{0,80}>))
  | (?P<special><\|[^<>|\s]{1,40}\|>)
  | (?P<angle></?[A-Za-z][A-Za-z_\-]{0,30}>)
  | (?P<square>\[[^\[\]\n]{1,60}\])
  | (?P<brace>\{[^{}\n]{1,200}\})
""", re.VERBOSE)
_NUMERIC_PINYIN = re.compile(r"[a-zü]+[0-5]")
_MARKED_PINYIN = re.compile(r"[a-zü]*[āáǎàēéěèīíǐìōóǒòūúǔùǖǘǚǜ][a-zü]*")
_ARPABET = re.compile(r"[A-Z]{1,3}[0-9]?")
_LOOKS_LIKE_TOKEN = re.compile(r"[a-zü_\-āáǎàēéěèīíǐìōóǒòūúǔùǖǘǚǜ]+[0-9]?|[A-Z]{1,4}[0-9]?")


@dataclass(frozen=True)
class _Token:
    kind: str          # "initial" | "final" | "cmu" | "tag" | "syllable" | "text"
    value: object
    start: int         # 0-based offset in the input
    end: int
    piece: str


def _words_markup(content: str, start: int, piece: str, braces: bool) -> list[_Token] | None:
    """Friendly multi-word content: all numeric/marked pinyin, or one ARPAbet word; None if neither."""
    words = content.split()
    if not words:
        return None
    position = start + 1
    if all(_NUMERIC_PINYIN.fullmatch(w) or _MARKED_PINYIN.fullmatch(w) for w in words):
        out = []
        for w in words:
            syl = syllable(w, piece, position) if w[-1].isdigit() else syllable_from_marked(w, piece, position)
            out.append(_Token("syllable", syl, start, start + len(piece), piece))
        return out
    if all(_ARPABET.fullmatch(w) for w in words):
        for w in words:
            if w not in CMU_PHONE_SET:
                raise MarkupError(f'"{piece}" at character {position}: "{w}" is not a CMU phone '
                                  f"(vowels take stress 0/1/2, e.g. AY0 UW1).", piece, position)
        return [_Token("cmu", tuple(words), start, start + len(piece), piece)]
    if braces and re.fullmatch(r"[A-Za-z0-9üÜ\s]+", content) and re.search(r"[A-Za-z]", content):
        raise MarkupError(f'"{piece}" at character {position} is neither numeric pinyin (hao4 lv4 ma5) '
                          f"nor CMU phones (M AY0 N UW1 T).", piece, position)
    return None


_PAUSE_SECONDS = re.compile(r"\[\s*pause\s*:\s*(\d+(?:\.\d+)?|\.\d+)\s*s?\s*\]", re.IGNORECASE)
_BREAK_TIME = re.compile(r"""<\s*break\s+time\s*=\s*(["'])\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s)\s*\1\s*/?\s*>""",
                         re.IGNORECASE)


def pause_seconds(piece: str, position: int = 0) -> float:
    """"[pause:0.8]" / '<break time="800ms"/>' -> 0.8, or MarkupError saying the forms and the range."""
    seconds: float | None = None
    if (m := _PAUSE_SECONDS.fullmatch(piece)) is not None:
        seconds = float(m.group(1))
    elif (m := _BREAK_TIME.fullmatch(piece)) is not None:
        seconds = float(m.group(2)) / (1000.0 if m.group(3).lower() == "ms" else 1.0)
    if seconds is None or not PAUSE_MIN_SECONDS <= seconds <= PAUSE_MAX_SECONDS:
        what = "is not a pause the frontend understands" if seconds is None else f"asks for {seconds:g} s"
        raise MarkupError(f'"{piece}" at character {position} {what}: a pause lasts '
                          f"{PAUSE_MIN_SECONDS:g}–{PAUSE_MAX_SECONDS:g} seconds, written {PAUSE_FORMS}.",
                          piece, position)
    return seconds


def _classify(match: re.Match) -> list[_Token]:
    piece = match.group(0)
    start, end = match.span()
    position = start + 1
    kind = match.lastgroup
    if kind == "pause":
        return [_Token("pause", pause_seconds(piece, position), start, end, piece)]
    if kind in ("special", "angle"):
        if piece not in TAG_SET:
            raise MarkupError(f'Unknown tag "{piece}" at character {position}. Known tags: '
                              + " ".join(t for t in TAG_TOKENS if t.startswith("<")) + ".", piece, position)
        return [_Token("tag", piece, start, end, piece)]
    content = piece[1:-1]
    if kind == "square":
        if piece in TAG_SET:
            return [_Token("tag", piece, start, end, piece)]
        if content in PINYIN_INITIALS:
            return [_Token("initial", content, start, end, piece)]
        if content in PINYIN_FINALS:
            return [_Token("final", content, start, end, piece)]
        if content in CMU_PHONE_SET:
            return [_Token("cmu", (content,), start, end, piece)]
        words = _words_markup(content, start, piece, braces=False)
        if words is not None:
            return words
        if _LOOKS_LIKE_TOKEN.fullmatch(content):
            raise MarkupError(f'Unknown markup token "{piece}" at character {position}. Pinyin is written '
                              f"[h][ào] or [hao4], CMU phones [M][AY0], tags like [breath]. Write it "
                              f"without brackets if it is meant as text.", piece, position)
        return [_Token("text", piece, start, end, piece)]
    words = _words_markup(content, start, piece, braces=True)
    return words if words is not None else [_Token("text", piece, start, end, piece)]


def parse(marked_text: str) -> list[Item]:
    """Marked text (canonical or friendly form) -> checked items; MarkupError on the first problem."""
    tokens: list[_Token] = []
    cursor = 0
    for match in _CANDIDATE.finditer(marked_text):
        if match.start() > cursor:
            tokens.append(_Token("text", marked_text[cursor:match.start()], cursor, match.start(), ""))
        tokens.extend(_classify(match))
        cursor = match.end()
    if cursor < len(marked_text):
        tokens.append(_Token("text", marked_text[cursor:], cursor, len(marked_text), ""))

    items: list[Item] = []
    open_tags: list[_Token] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        position = tok.start + 1
        if tok.kind == "text":
            _append_text(items, str(tok.value))
        elif tok.kind == "initial":
            nxt = tokens[i + 1] if i + 1 < len(tokens) else None
            if nxt is None or nxt.kind != "final" or nxt.start != tok.end:
                raise MarkupError(f'Pinyin initial "{tok.piece}" at character {position} must be followed '
                                  f"directly by a final, like [h][ào].", tok.piece, position)
            pair = tok.piece + nxt.piece
            items.append(_syllable_from_tokens(str(tok.value), str(nxt.value), pair, position))
            i += 1
        elif tok.kind == "final":
            items.append(_syllable_from_tokens("", str(tok.value), tok.piece, position))
        elif tok.kind == "syllable":
            items.append(tok.value)  # type: ignore[arg-type]
        elif tok.kind == "pause":
            items.append(Pause(float(tok.value)))  # type: ignore[arg-type]
        elif tok.kind == "cmu":
            phones: tuple[str, ...] = tuple(tok.value)  # type: ignore[arg-type]  # cmu tokens hold a list of str
            prev = tokens[i - 1] if i else None
            if items and isinstance(items[-1], CmuWord) and prev is not None and prev.end == tok.start:
                items[-1] = CmuWord(items[-1].phones + phones)
            else:
                items.append(CmuWord(phones))
        else:  # tag
            _track_pairs(tok, open_tags)
            items.append(Tag(str(tok.value)))
        i += 1
    if open_tags:
        tok = open_tags[-1]
        raise MarkupError(f'"{tok.piece}" at character {tok.start + 1} is never closed with '
                          f'"{PAIRED_TAGS[tok.piece]}".', tok.piece, tok.start + 1)
    return items


def _append_text(items: list[Item], text: str) -> None:
    if not text:
        return
    if items and isinstance(items[-1], TextRun):
        items[-1] = TextRun(items[-1].text + text)
    else:
        items.append(TextRun(text))


def _track_pairs(tok: _Token, open_tags: list[_Token]) -> None:
    position = tok.start + 1
    if tok.piece in PAIRED_TAGS:
        if any(t.piece == tok.piece for t in open_tags):
            raise MarkupError(f'"{tok.piece}" at character {position} opens again before the earlier '
                              f'one is closed.', tok.piece, position)
        open_tags.append(tok)
    elif tok.piece in _CLOSING_TAGS:
        expected = _CLOSING_TAGS[tok.piece]
        if not open_tags or open_tags[-1].piece != expected:
            what = (f'"{open_tags[-1].piece}" is still open' if open_tags
                    else f'there is no "{expected}" before it')
            raise MarkupError(f'"{tok.piece}" at character {position} does not match: {what}.',
                              tok.piece, position)
        open_tags.pop()


# --- rendering ------------------------------------------------------------------------------

def render_item(item: Item) -> str:
    if isinstance(item, TextRun):
        return item.text
    if isinstance(item, PinyinSyllable):
        return (f"[{item.initial}]" if item.initial else "") + f"[{item.final}]"
    if isinstance(item, CmuWord):
        return "".join(f"[{p}]" for p in item.phones)
    if isinstance(item, Pause):
        return f"[pause:{item.seconds:g}]"
    return item.token


def render(items: list[Item]) -> str:
    """Items -> canonical marked text (what the engines receive)."""
    return "".join(render_item(item) for item in items)


def to_markup(text: str) -> str:
    """Check text and rewrite friendly forms ({hao4}, {M AY0 N UW1 T}) in canonical form."""
    return render(parse(text))
