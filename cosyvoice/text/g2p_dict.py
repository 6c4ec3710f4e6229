"""The replace dictionary: words whose reading the user fixes once, in a JSONL file.

Each line is a JSON object mapping a word to its replacement, e.g. {"重庆": "[ch][óng]庆"} or
{"银行": "yin2 hang2"}; the replacement is markup (canonical or friendly) or whole-word numeric
pinyin. Matching is leftmost-longest over plain text only, never inside markup. A malformed line
is reported with its number and skipped; the file is re-read when its mtime or size changes.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from cosyvoice.text.markup import Item, MarkupError, Pause, TextRun, parse

DEFAULT_G2P_DICT = Path(__file__).resolve().parents[2] / "configs" / "G2P_replace_dict.jsonl"

_WHOLE_NUMERIC_PINYIN = re.compile(r"\s*[a-zü]+[0-5](\s+[a-zü]+[0-5])*\s*")


@dataclass
class _Loaded:
    stamp: tuple[int, int] | None = None               # (mtime_ns, size) of the file read
    entries: dict[str, tuple[Item, ...]] = field(default_factory=dict)
    longest: int = 0
    notices: list[str] = field(default_factory=list)


def parse_replacement(value: str) -> tuple[Item, ...]:
    """Replacement text -> items; "chong2 qing4" is taken as a sequence of syllables."""
    if _WHOLE_NUMERIC_PINYIN.fullmatch(value):
        value = "{" + value.strip() + "}"
    items = tuple(parse(value))
    if any(isinstance(item, Pause) for item in items):
        raise MarkupError("a replacement cannot hold a pause; put pauses in the text itself.")
    return items


class G2PDictionary:
    def __init__(self, path: Path | None = DEFAULT_G2P_DICT):
        self.path = Path(path) if path is not None else None
        self._loaded = _Loaded()
        self.refresh()

    @property
    def notices(self) -> list[str]:
        return list(self._loaded.notices)

    @property
    def entries(self) -> dict[str, tuple[Item, ...]]:
        return self._loaded.entries

    def refresh(self) -> None:
        """Re-read the file when it changed since the last read (one stat call otherwise)."""
        if self.path is None:
            return
        try:
            st = os.stat(self.path)
        except OSError:
            if self._loaded.stamp != (-1, -1):
                self._loaded = _Loaded(stamp=(-1, -1), notices=[f"G2P dictionary {self.path} not found; none applied."])
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._loaded.stamp:
            self._loaded = self._read(stamp)

    def _read(self, stamp: tuple[int, int]) -> _Loaded:
        assert self.path is not None
        loaded = _Loaded(stamp=stamp)
        defined_on: dict[str, int] = {}
        name = self.path.name
        try:
            lines = self.path.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            loaded.notices.append(f"G2P dictionary {self.path} could not be read ({err}); none applied.")
            return loaded
        for number, line in enumerate(lines, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                loaded.notices.append(f"{name} line {number}: not valid JSON ({err.msg}); skipped.")
                continue
            if not isinstance(obj, dict) or not obj:
                loaded.notices.append(f'{name} line {number}: expected an object like {{"重庆": "[ch][óng]庆"}}; skipped.')
                continue
            for word, value in obj.items():
                if not word.strip() or not isinstance(value, str) or not value.strip():
                    loaded.notices.append(f"{name} line {number}: word and replacement must be non-empty strings; skipped.")
                    continue
                try:
                    items = parse_replacement(value)
                except MarkupError as err:
                    loaded.notices.append(f"{name} line {number}: replacement for {word!r}: {err} Skipped.")
                    continue
                if word in defined_on:
                    loaded.notices.append(f"{name} line {number}: {word!r} already defined on line "
                                          f"{defined_on[word]}; the later line is used.")
                defined_on[word] = number
                loaded.entries[word] = items
                loaded.longest = max(loaded.longest, len(word))
        return loaded

    def apply(self, items: list[Item]) -> list[Item]:
        """Replace dictionary words inside plain-text runs (leftmost, longest match first)."""
        loaded = self._loaded
        if not loaded.entries:
            return list(items)
        out: list[Item] = []
        for item in items:
            if isinstance(item, TextRun):
                out.extend(self._apply_run(item.text, loaded))
            else:
                out.append(item)
        return out

    @staticmethod
    def _apply_run(text: str, loaded: _Loaded) -> list[Item]:
        out: list[Item] = []
        plain_start = 0
        i = 0
        while i < len(text):
            for size in range(min(loaded.longest, len(text) - i), 0, -1):
                replacement = loaded.entries.get(text[i:i + size])
                if replacement is not None:
                    if i > plain_start:
                        out.append(TextRun(text[plain_start:i]))
                    out.extend(replacement)
                    i += size
                    plain_start = i
                    break
            else:
                i += 1
        if plain_start < len(text):
            out.append(TextRun(text[plain_start:]))
        return out
