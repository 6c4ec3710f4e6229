"""Packing checked items into the pieces the engines read one at a time, the way the official
CosyVoice frontend (`split_paragraph`, called with token_max_n=80, token_min_n=60, merge_len=20)
does it:

1. A paragraph that does not end in sentence punctuation gets one ("。" for zh, "." for en);
   trailing Chinese commas (，,、) become "。".
2. It is cut after each sentence mark: zh `。？！；：、.?!;`, en `.?!;:` (plus `，,` with
   comma_split). A closing quote right after the mark stays with its sentence.
3. Sentences are joined in order; a new piece starts only when adding the next sentence would pass
   max_piece_units *and* the current piece already has more than min_piece_units.
4. A last piece under merge_units is joined to the one before it.
5. Pieces of punctuation only are dropped.

Length ("units"): zh (and mixed) text counts characters (not the spaces the official frontend
removes, only one between two ASCII words), one per pinyin syllable, one per CMU phone, none for tags; en text counts the active model's tokenizer tokens (`count_tokens`), or
`estimate_tokens` when no tokenizer is at hand.

Where this differs from the official code, on purpose:
- A sentence longer than max_sentence_units (what the LLM can take in one piece) is cut inside: at
  clause marks first, then between words, then anywhere in plain text. No piece is joined past that
  limit either. This is the only case a sentence is cut.
- A pause ([pause:0.8], <break time="800ms"/>) ends the piece; each stretch between pauses is
  packed as its own paragraph.
- Markup is never cut, and a <strong>/<laughter> span that has to be cut is closed at the end of one
  piece and reopened at the start of the next, so every piece is valid markup on its own.
- Repeated marks ("?!", "。。") stay with the sentence (the official code drops all but the first);
  closing brackets 」』’）) and closing tags stay too, not only " and ”.
- "." followed directly by a letter or digit (3.5, e.g., www.x.com) is not a sentence end. A line
  break is one, but is not read: Chinese lines are joined directly, English ones with a space.
"""
from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Callable

from cosyvoice.text.markup import PAIRED_TAGS, CmuWord, Item, Pause, PinyinSyllable, Tag, TextRun, render_item

SENTENCE_MARKS = {"zh": frozenset("。？！；：、.?!;\n"), "en": frozenset(".?!;:\n")}
COMMA_MARKS = frozenset("，,")
CLAUSE_MARKS = frozenset("，,、：:；;…—")
FINAL_MARK = {"zh": "。", "en": "."}
CLOSERS = frozenset("\"'”’」』）)]】》")
_CLOSE_OF = PAIRED_TAGS
_OPEN_OF = {close: open_ for open_, close in PAIRED_TAGS.items()}
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff\u3007]")

DEFAULT_MAX_PIECE_UNITS = 80
# 200 Chinese characters are about 40-50 s of speech (~1000-1250 speech tokens at 25 Hz), 200
# English tokens about a minute: well inside what the LLM decodes in one go. The engine may set
# its own from the LLM's maximum length.
DEFAULT_MAX_SENTENCE_UNITS = 200

TokenCounter = Callable[[str], int]


@dataclass(frozen=True)
class Packing:
    """The packing limits, in units (see the module docstring). min/merge default to the
    official 60/20 at 80, scaled with max_piece_units (3/4 and 1/4 of it)."""
    max_piece_units: int = DEFAULT_MAX_PIECE_UNITS
    min_piece_units: int | None = None
    merge_units: int | None = None
    max_sentence_units: int = DEFAULT_MAX_SENTENCE_UNITS
    comma_split: bool = False

    @property
    def min_units(self) -> int:
        return self.min_piece_units if self.min_piece_units is not None else self.max_piece_units * 3 // 4

    @property
    def merge(self) -> int:
        return self.merge_units if self.merge_units is not None else self.max_piece_units // 4

    @property
    def cap(self) -> int:
        return max(1, self.max_sentence_units)


@dataclass(frozen=True)
class Piece:
    text: str          # valid markup, stripped
    units: int         # its length as the packing counted it


_PRE_TOKEN = re.compile(r"\[[^\[\]\s]{1,12}\]|<\|?/?[a-z_]+\|?>|'(?:s|t|re|ve|m|ll|d)\b|[^\W\d_]+|\d|[^\w\s]+|_+",
                        re.IGNORECASE)


def estimate_tokens(text: str) -> int:
    """Rough Qwen2 BPE token count for English, for engines without that tokenizer (lite).

    One token per markup token ([M], [AY0], <strong>), per contraction ('s, 't), per digit and per
    run of punctuation; a word is one token up to 9 letters and one more for every further 4
    ("minute" 1, "photosynthesis" 3). Everyday English words are mostly single Qwen2 tokens, so
    this stays within a few tokens per sentence of the real count.
    """
    count = 0
    for match in _PRE_TOKEN.finditer(text):
        word = match.group(0)
        if word[0].isalpha():
            count += 1 + math.ceil(max(0, len(word) - 9) / 4)
        else:
            count += 1
    return count


@dataclass(frozen=True)
class _Atom:
    text: str          # rendered form
    units: int         # zh units
    item: Item | None  # None for one character of plain text


def _zh_units(text: str, i: int) -> int:
    """A character counts one, except a space the official frontend removes (replace_blank keeps
    only a single space between two ASCII non-space characters, as in "It takes")."""
    if text[i] == "\n":
        return 0
    if not text[i].isspace():
        return 1
    before, after = text[i - 1:i], text[i + 1:i + 2]
    keep = before.isascii() and after.isascii() and before.strip() and after.strip()
    return 1 if keep else 0


def _atoms(items: list[Item]) -> list[_Atom]:
    atoms: list[_Atom] = []
    for item in items:
        if isinstance(item, TextRun):
            atoms.extend(_Atom(ch, _zh_units(item.text, i), None) for i, ch in enumerate(item.text))
        elif isinstance(item, PinyinSyllable):
            atoms.append(_Atom(render_item(item), 1, item))
        elif isinstance(item, CmuWord):
            atoms.append(_Atom(render_item(item), len(item.phones), item))
        elif isinstance(item, Pause):
            atoms.append(_Atom("", 0, item))
        else:
            atoms.append(_Atom(render_item(item), 0, item))
    return atoms


def _is_mark(atoms: list[_Atom], i: int, marks: frozenset[str]) -> bool:
    atom = atoms[i]
    if atom.item is not None or atom.text not in marks:
        return False
    if atom.text == "." and i + 1 < len(atoms):     # 3.5, e.g., www.x.com
        nxt = atoms[i + 1]
        return not (nxt.item is None and nxt.text.isascii() and nxt.text.isalnum())
    return True


def _closes(atom: _Atom, marks: frozenset[str]) -> bool:
    """What stays with the sentence that just ended: closing quotes, more marks, closing tags."""
    if atom.item is None:
        return atom.text != "\n" and (atom.text in CLOSERS or atom.text in marks)
    return isinstance(atom.item, Tag) and atom.item.token in _OPEN_OF


def _cut_after(atoms: list[_Atom], marks: frozenset[str]) -> list[list[_Atom]]:
    """Cut after each mark, keeping what closes the sentence with it."""
    groups: list[list[_Atom]] = []
    current: list[_Atom] = []
    i = 0
    while i < len(atoms):
        current.append(atoms[i])
        if _is_mark(atoms, i, marks):
            while i + 1 < len(atoms) and _closes(atoms[i + 1], marks):
                i += 1
                current.append(atoms[i])
            groups.append(current)
            current = []
        i += 1
    if current:
        groups.append(current)
    return groups


def _is_readable(ch: str) -> bool:
    """A character either voice can read: Han, a Latin letter, a digit."""
    if ch.isascii():
        return ch.isalnum()
    if _HAN.match(ch):
        return True
    return ch.isalpha() and unicodedata.name(ch, "").startswith("LATIN")


def has_speech(atoms: list[_Atom]) -> bool:
    for atom in atoms:
        if atom.item is None:
            if _is_readable(atom.text):
                return True
        elif isinstance(atom.item, (PinyinSyllable, CmuWord)):
            return True
        elif isinstance(atom.item, Tag) and atom.item.token.startswith("["):
            return True                          # [breath], [laughter]: the model voices them
    return False


def _needs_final_mark(atoms: list[_Atom], marks: frozenset[str]) -> bool:
    """True unless the text ends in a mark (or a mark and what closes it); trailing tags aside."""
    tail = [a for a in atoms if not a.text.isspace() and not isinstance(a.item, Tag)]
    i = len(tail) - 1
    while i >= 0 and tail[i].item is None and tail[i].text in CLOSERS:
        i -= 1
    return i < 0 or not (tail[i].item is None and tail[i].text in marks and tail[i].text != "\n")


def _trailing_commas_to_stop(atoms: list[_Atom]) -> list[_Atom]:
    """Chinese text ending in ，/,/、 ends in 。 instead, as the official frontend rewrites it."""
    end = len(atoms)
    while end and (atoms[end - 1].text.isspace() or isinstance(atoms[end - 1].item, Tag)):
        end -= 1
    start = end
    while start and atoms[start - 1].item is None and atoms[start - 1].text in "，,、":
        start -= 1
    if start == end:
        return atoms
    return atoms[:start] + [_Atom("。", 1, None)] + atoms[end:]


class _Measure:
    """Length of a run of atoms in the units of the paragraph's language."""

    def __init__(self, lang: str, count_tokens: TokenCounter | None):
        self.tokens = (count_tokens or estimate_tokens) if lang == "en" else None

    def __call__(self, atoms: list[_Atom]) -> int:
        if self.tokens is None:
            return sum(a.units for a in atoms)
        return self.tokens("".join(a.text for a in atoms))


def _greedy(groups: list[list[_Atom]], measure: _Measure, limit: int) -> list[list[_Atom]]:
    packed: list[list[_Atom]] = []
    for group in groups:
        if packed and measure(packed[-1] + group) <= limit:
            packed[-1] = packed[-1] + group
        else:
            packed.append(list(group))
    return packed


def _cut_anywhere(group: list[_Atom], measure: _Measure, limit: int) -> list[list[_Atom]]:
    return _greedy([[atom] for atom in group], measure, limit)


def _fit(sentence: list[_Atom], measure: _Measure, rules: Packing) -> list[list[_Atom]]:
    """A sentence the LLM can take whole stays whole; a longer one is cut at clauses, words, atoms."""
    if measure(sentence) <= rules.cap:
        return [sentence]
    chunks: list[list[_Atom]] = []
    for clause in _cut_after(sentence, CLAUSE_MARKS):
        if measure(clause) <= rules.cap:
            chunks.append(clause)
            continue
        words: list[list[_Atom]] = []
        for word in _cut_after(clause, frozenset(" \t")):
            fits = measure(word) <= rules.max_piece_units
            words.extend([word] if fits else _cut_anywhere(word, measure, rules.max_piece_units))
        chunks.extend(_greedy(words, measure, rules.max_piece_units))
    return chunks


def _pack(sentences: list[list[_Atom]], measure: _Measure, rules: Packing) -> list[list[_Atom]]:
    """The official packing rule, and never past the sentence limit."""
    pieces: list[list[_Atom]] = []
    current: list[_Atom] = []
    for sentence in sentences:
        if current:
            joined = measure(current + sentence)
            if (joined > rules.max_piece_units and measure(current) > rules.min_units) or joined > rules.cap:
                pieces.append(current)
                current = []
        current = current + sentence
    if current:
        if pieces and measure(current) < rules.merge and measure(pieces[-1] + current) <= rules.cap:
            pieces[-1] = pieces[-1] + current
        else:
            pieces.append(current)
    return pieces


def _paragraph(atoms: list[_Atom], lang: str, measure: _Measure, rules: Packing) -> list[list[_Atom]]:
    if not has_speech(atoms):
        return [atoms] if atoms else []         # kept only so its tags stay balanced
    marks = SENTENCE_MARKS[lang] | (COMMA_MARKS if rules.comma_split else frozenset())
    if lang == "zh":
        atoms = _trailing_commas_to_stop(atoms)
    if _needs_final_mark(atoms, marks):
        atoms = atoms + [_Atom(FINAL_MARK[lang], 1, None)]
    sentences = [chunk for sentence in _cut_after(atoms, marks) for chunk in _fit(sentence, measure, rules)]
    return _pack(sentences, measure, rules)


_BREAK_BETWEEN_WORDS = re.compile(r"(?<=[A-Za-z0-9])[ \t]*\n\s*(?=[A-Za-z0-9])")


def _join_lines(text: str, lang: str) -> str:
    """A line break ends a sentence but is not read: the official frontend removes it from Chinese
    text, so Chinese lines join directly (a space only between two Latin words), English with a space."""
    if "\n" not in text:
        return text
    if lang == "en":
        return re.sub(r"\s*\n\s*", " ", text)
    return re.sub(r"\s*\n\s*", "", _BREAK_BETWEEN_WORDS.sub(" ", text))


def _render(group: list[_Atom], reopen: list[str], lang: str) -> tuple[str, list[str]]:
    """Render one piece, closing spans left open and reporting them for the next piece."""
    open_tags = list(reopen)
    text = "".join(reopen)
    for atom in group:
        if isinstance(atom.item, Tag):
            if atom.item.token in _CLOSE_OF:
                open_tags.append(atom.item.token)
            elif atom.item.token in _OPEN_OF and open_tags and open_tags[-1] == _OPEN_OF[atom.item.token]:
                open_tags.pop()
        text += atom.text
    text = _join_lines(text.strip(), lang)
    closing = "".join(_CLOSE_OF[t] for t in reversed(open_tags))
    return text + closing, open_tags


def split_items(items: list[Item], lang: str = "zh", rules: Packing = Packing(),
                count_tokens: TokenCounter | None = None) -> list[Piece | Pause]:
    """Checked items -> pieces and pauses in reading order.

    lang "en" counts tokens (count_tokens, else estimate_tokens); anything else counts characters.
    """
    lang = "en" if lang == "en" else "zh"
    measure = _Measure(lang, count_tokens)
    paragraphs: list[list[_Atom] | Pause] = [[]]
    for atom in _atoms(items):
        if isinstance(atom.item, Pause):
            paragraphs += [atom.item, []]
        else:
            paragraphs[-1].append(atom)  # type: ignore[union-attr]

    out: list[Piece | Pause] = []
    reopen: list[str] = []
    for paragraph in paragraphs:
        if isinstance(paragraph, Pause):
            out.append(paragraph)
            continue
        for group in _paragraph(paragraph, lang, measure, rules):
            text, reopen = _render(group, reopen, lang)
            if has_speech(group):
                out.append(Piece(text, measure(group)))
    return out
