"""Voice names and ids: what a name may be, and when two names are the same name.

A voice has one identity, its id (`voice_` + 12 hex digits, made by the library, never chosen by a
user). A name is a label a person types; it may never be, or look like, an id, and two names that a
reader cannot tell apart are one name. "Cannot tell apart" is decided by `name_key`:

    NFKC (full-width ｎ → n, ligatures, compatibility forms) → casefold → UTS #39 confusables
    skeleton (Cyrillic а → a, Greek ν → v, 1/I → l) → spaces collapsed

The skeleton uses the Unicode consortium's confusables.txt as shipped (as JSON) by the
`confusable_homoglyphs` package: pure Python, no system library, the data regenerated from
unicode.org by its maintainers. PyICU's SpoofChecker computes the same skeleton, but it needs
libicu-dev and a C++ build on every install, which run.sh cannot promise.
"""
from __future__ import annotations

import re
import unicodedata
import uuid
from functools import lru_cache

from confusable_homoglyphs.confusables import confusables_data

from cosyvoice.errors import UserInputError

MAX_NAME_CHARS = 64
ID_PREFIX = "voice_"
ID_PATTERN = re.compile(r"voice_[0-9a-f]{12}")
_NAME_PUNCTUATION = " -_.()'"
_DIRECTION_MARKS = "\u200e\u200f"          # the JSON wraps right-to-left characters in these


def new_voice_id() -> str:
    return f"{ID_PREFIX}{uuid.uuid4().hex[:12]}"


def is_voice_id(text: str) -> bool:
    return bool(ID_PATTERN.fullmatch(text))


@lru_cache(maxsize=1)
def _prototypes() -> dict[str, str]:
    """{character: its confusables prototype}. The package stores confusables.txt's one-way map
    (source → prototype) in both directions; a source has exactly one partner, its prototype."""
    partners = {key.strip(_DIRECTION_MARKS): [e["c"].strip(_DIRECTION_MARKS) for e in entries]
                for key, entries in confusables_data.items()}
    table = {}
    for char, others in partners.items():
        if len(char) != 1 or len(others) != 1:
            continue                                    # a prototype (several sources map to it)
        target = others[0]
        if partners.get(target) == [char]:              # a pair: either could be the prototype
            target = min(char, target)
        table[char] = target
    return table


@lru_cache(maxsize=4096)
def name_key(name: str) -> str:
    """The form two names are compared in: equal keys mean a reader could mistake one for the other."""
    text = unicodedata.normalize("NFKC", name).casefold()
    table = _prototypes()
    skeleton = "".join(table.get(char, char) for char in unicodedata.normalize("NFD", text))
    skeleton = unicodedata.normalize("NFD", skeleton).casefold()
    return " ".join(skeleton.split())


@lru_cache(maxsize=1)
def _id_key_pattern() -> re.Pattern:
    """The id pattern as keys see it (so `vоice_…` with a Cyrillic о is caught too)."""
    hex_keys = sorted({name_key(c) for c in "0123456789abcdef"})
    return re.compile(re.escape(name_key(ID_PREFIX)) + "(?:" + "|".join(map(re.escape, hex_keys)) + ")+")


def looks_like_id(name: str) -> bool:
    return bool(_id_key_pattern().fullmatch(name_key(name)))


def validate_name(name: object) -> str:
    """A voice name a user can type and read back: letters, digits and a little punctuation, never
    anything that looks like a path, a control character or a voice id."""
    if not isinstance(name, str):
        raise UserInputError("The voice name must be text.")
    name = unicodedata.normalize("NFC", name.strip())
    if not name:
        raise UserInputError("The voice name is empty. Give the voice a name, e.g. 'narrator' or '小王'.")
    if len(name) > MAX_NAME_CHARS:
        raise UserInputError(f"The voice name is {len(name)} characters long; the limit is {MAX_NAME_CHARS}.")
    bad = [c for c in name if not (c.isalnum() or c in _NAME_PUNCTUATION)]
    if bad or name.startswith(".") or ".." in name:
        shown = "".join(dict.fromkeys(repr(c)[1:-1] for c in bad)) or "."
        raise UserInputError(f"The voice name {name[:40]!r} has characters a name cannot hold ({shown}). Use "
                             f"letters, digits, spaces and - _ . ( ) ', not starting with a dot.")
    if looks_like_id(name):
        raise UserInputError(f"The voice name {name[:40]!r} looks like a voice id (voice_ and hex digits); ids are "
                             f"made by the library and a name may never be one. Choose another name.")
    return name


def check_stored_name(name: object) -> str:
    """A name read back from disk: the character rules, but an old id-like name is kept (only
    lookups by name skip it) so the voice still lists and can be renamed by its id."""
    try:
        return validate_name(name)
    except UserInputError:
        if isinstance(name, str) and looks_like_id(name) and all(c.isalnum() or c in _NAME_PUNCTUATION
                                                                  for c in name):
            return unicodedata.normalize("NFC", name.strip())
        raise
