"""Sentence splitting of checked items into pieces the engine can take one at a time.

Length is counted in "reading units": one per character of plain text, one per pinyin syllable,
one per CMU phone, none for tags. Pieces break after sentence punctuation; a sentence still longer
than the limit breaks after commas, then between words, and only as a last resort anywhere in
plain text. Markup is never cut, and a <strong>/<laughter> span that has to be cut is closed at
the end of one piece and reopened at the start of the next, so every piece is valid markup.
"""
from __future__ import annotations

from dataclasses import dataclass

from cosyvoice.text.markup import PAIRED_TAGS, CmuWord, Item, PinyinSyllable, Tag, TextRun, render_item

SENTENCE_END = set("。！？!?；;…\n")
CLAUSE_END = set("，,、：:")
CLOSERS = set("\"'”’」』）)]】》")
_CLOSE_OF = PAIRED_TAGS
_OPEN_OF = {close: open_ for open_, close in PAIRED_TAGS.items()}
SPEAKABLE_PUNCT = set("。！？!?；;…，,、：:\"'“”‘’「」『』（）()[]【】《》-—·~～.")


@dataclass(frozen=True)
class _Atom:
    text: str          # rendered form
    units: int         # reading units
    item: Item | None  # None for one character of plain text


def _atoms(items: list[Item]) -> list[_Atom]:
    atoms: list[_Atom] = []
    for item in items:
        if isinstance(item, TextRun):
            atoms.extend(_Atom(ch, 0 if ch.isspace() else 1, None) for ch in item.text)
        elif isinstance(item, PinyinSyllable):
            atoms.append(_Atom(render_item(item), 1, item))
        elif isinstance(item, CmuWord):
            atoms.append(_Atom(render_item(item), len(item.phones), item))
        else:
            atoms.append(_Atom(render_item(item), 0, item))
    return atoms


def _is_dot_end(atoms: list[_Atom], i: int) -> bool:
    """An English full stop: "." followed by whitespace or the end, not a decimal point."""
    if atoms[i].text != "." or atoms[i].item is not None:
        return False
    return i + 1 == len(atoms) or atoms[i + 1].text.isspace()


def _closes(atom: _Atom, marks: set[str]) -> bool:
    """What stays with the sentence that just ended: closing quotes, more marks, closing tags."""
    if atom.item is None:
        return atom.text in CLOSERS or atom.text in marks
    return isinstance(atom.item, Tag) and atom.item.token in _OPEN_OF


def _cut_after(atoms: list[_Atom], marks: set[str], dot: bool) -> list[list[_Atom]]:
    """Cut after each mark (plus any closing quotes that follow it)."""
    groups: list[list[_Atom]] = []
    current: list[_Atom] = []
    i = 0
    while i < len(atoms):
        atom = atoms[i]
        current.append(atom)
        if atom.item is None and (atom.text in marks or (dot and _is_dot_end(atoms, i))):
            while i + 1 < len(atoms) and _closes(atoms[i + 1], marks):
                i += 1
                current.append(atoms[i])
            groups.append(current)
            current = []
        i += 1
    if current:
        groups.append(current)
    return groups


def _units(group: list[_Atom]) -> int:
    return sum(a.units for a in group)


def _pack(groups: list[list[_Atom]], limit: int) -> list[list[_Atom]]:
    """Greedily join consecutive groups while they fit in the limit."""
    packed: list[list[_Atom]] = []
    for group in groups:
        if packed and _units(packed[-1]) + _units(group) <= limit:
            packed[-1] = packed[-1] + group
        else:
            packed.append(list(group))
    return packed


def _hard_cut(group: list[_Atom], limit: int) -> list[list[_Atom]]:
    """Cut an over-long clause between words where possible, else between atoms."""
    words = _cut_after(group, {" ", "\t"}, dot=False)
    if all(_units(w) <= limit for w in words) and len(words) > 1:
        return _pack(words, limit)
    out: list[list[_Atom]] = [[]]
    for atom in group:
        if out[-1] and _units(out[-1]) + atom.units > limit:
            out.append([])
        out[-1].append(atom)
    return out


def _render(group: list[_Atom], reopen: list[str]) -> tuple[str, list[str]]:
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
    text = text.strip()
    closing = "".join(_CLOSE_OF[t] for t in reversed(open_tags))
    return text + closing, open_tags


def has_speech(group_text_items: list[_Atom]) -> bool:
    for atom in group_text_items:
        if atom.item is None:
            if not atom.text.isspace() and atom.text not in SPEAKABLE_PUNCT:
                return True
        elif not isinstance(atom.item, Tag) or atom.item.token.startswith("["):
            return True
    return False


def split_items(items: list[Item], max_piece_chars: int = 80, min_piece_chars: int = 4) -> list[str]:
    """Checked items -> marked pieces, each at most max_piece_chars reading units where possible."""
    limit = max(1, max_piece_chars)
    pieces: list[list[_Atom]] = []
    for sentence in _cut_after(_atoms(items), SENTENCE_END, dot=True):
        if _units(sentence) <= limit:
            pieces.append(sentence)
            continue
        for clause in _pack(_cut_after(sentence, CLAUSE_END, dot=False), limit):
            pieces.extend(_hard_cut(clause, limit) if _units(clause) > limit else [clause])
    pieces = [p for p in pieces if has_speech(p)]
    # A fragment like "嗯。" or "OK." is too short to be read well alone: join it to a neighbour.
    merged: list[list[_Atom]] = []
    for piece in pieces:
        if merged and (_units(piece) < min_piece_chars or _units(merged[-1]) < min_piece_chars) \
                and _units(merged[-1]) + _units(piece) <= limit:
            merged[-1] = merged[-1] + piece
        else:
            merged.append(piece)
    out: list[str] = []
    reopen: list[str] = []
    for piece in merged:
        text, reopen = _render(piece, reopen)
        if text:
            out.append(text)
    return out
