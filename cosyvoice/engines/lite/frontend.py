"""From frontend markup items to espeak input: language segments, pinyin, ARPAbet phonemes.

Mandarin characters are read with pypinyin (tone numbers, 5 = neutral) and handed to espeak as
pinyin, so pypinyin's readings and the markup's forced readings win over espeak's own dictionary.
CMU words become espeak phoneme input `[[...]]` through a fixed ARPAbet table.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from cosyvoice.text.markup import CmuWord, Item, PinyinSyllable, Tag, TextRun

# espeak voice per language; "+variant" is added by the engine
ESPEAK_VOICES = {"zh": "cmn", "yue": "yue", "en": "en-us"}

# ARPAbet -> espeak en mnemonics (American English)
ARPABET_VOWELS = {
    "AA": "A:", "AE": "a", "AH": "V", "AO": "O:", "AW": "aU", "AY": "aI", "EH": "E", "ER": "3:",
    "EY": "eI", "IH": "I", "IY": "i:", "OW": "oU", "OY": "OI", "UH": "U", "UW": "u:",
}
# unstressed forms that English reduces
ARPABET_UNSTRESSED = {"AH": "@", "ER": "3", "IY": "i"}
ARPABET_CONSONANTS = {
    "B": "b", "CH": "tS", "D": "d", "DH": "D", "F": "f", "G": "g", "HH": "h", "JH": "dZ", "K": "k",
    "L": "l", "M": "m", "N": "n", "NG": "N", "P": "p", "R": "r", "S": "s", "SH": "S", "T": "t",
    "TH": "T", "V": "v", "W": "w", "Y": "j", "Z": "z", "ZH": "Z",
}
STRESS_MARKS = {"1": "'", "2": ",", "0": ""}

# tags that are a breath: rendered as a pause of this many seconds
BREATH_PAUSES = {"[breath]": 0.28, "[quick_breath]": 0.14}
# tags the lite engine cannot voice: a short pause marks the spot
SILENT_TAGS = {"[laughter]", "[cough]", "[noise]", "[clucking]", "[hissing]", "[sigh]",
               "[vocalized-noise]", "[lipsmack]", "[mn]", "[accent]"}
UNRENDERED_PAUSE = 0.2

_HAN = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3007"
_TOKEN = re.compile(rf"(?P<han>[{_HAN}]+)|(?P<latin>[A-Za-z]+(?:['’][A-Za-z]+)*)"
                    r"|(?P<num>\d+(?:[.,:]\d+)*%?)|(?P<space>\s+)|(?P<other>.)", re.S)
_PAUSES = {"，": ",", "、": ",", "；": ";", "：": ":", "。": ".", "！": "!", "？": "?", "…": ".",
           ",": ",", ";": ";", ":": ":", ".": ".", "!": "!", "?": "?", "—": ",", "～": ",", "~": ","}
_SENTENCE_END = set(".!?")


@dataclass
class Segment:
    """One espeak call: a run of one language, or a pause."""
    lang: str                         # "zh", "yue", "en", or "pause"
    words: list[str] = field(default_factory=list)
    phoneme_input: bool = False       # holds [[...]] phonemes
    emphasis: bool = False            # inside <strong>...</strong>
    pause: float = 0.0                # seconds of silence (lang == "pause")

    @property
    def text(self) -> str:
        out = ""
        for word in self.words:
            if word in _PAUSES.values():
                out = out.rstrip() + word + " "
            else:
                out += word + " "
        return out.strip()

    def has_speech(self) -> bool:
        return any(w not in _PAUSES.values() for w in self.words)


def arpabet_to_espeak(phones: tuple[str, ...]) -> str:
    out = []
    for phone in phones:
        base, stress = phone.rstrip("012"), phone[len(phone.rstrip("012")):]
        if base in ARPABET_VOWELS:
            symbol = ARPABET_UNSTRESSED.get(base, ARPABET_VOWELS[base]) if stress == "0" else ARPABET_VOWELS[base]
            out.append(STRESS_MARKS.get(stress, "") + symbol)
        elif base in ARPABET_CONSONANTS:
            out.append(ARPABET_CONSONANTS[base])
        else:
            raise ValueError(f"not an ARPAbet phone: {phone}")
    return "".join(out)


def espeak_pinyin(numeric: str) -> str:
    """Numeric pinyin as espeak's cmn dictionary spells it: ü as v, except ju/qu/xu/yu."""
    text = numeric.lower().replace("ü", "v").replace("u:", "v")
    if text[:1] in ("j", "q", "x", "y"):
        text = text[0] + text[1:].replace("v", "u")
    if text and not text[-1].isdigit():
        text += "5"
    return text


@lru_cache(maxsize=4096)
def mandarin_words(han: str) -> tuple[str, ...]:
    """A run of Chinese characters as espeak pinyin words, one per segmented word ("chong2qing4")."""
    from pypinyin import Style, lazy_pinyin
    from pypinyin.seg.mmseg import seg

    words = []
    for word in seg.cut(han):
        syllables = lazy_pinyin(word, style=Style.TONE3, neutral_tone_with_five=True, tone_sandhi=True,
                                # pypinyin documents a list return for `errors`; its stubs say str only.
                                errors=lambda chars: ["_"] * len(chars))  # type: ignore[arg-type,return-value]
        syllables = [espeak_pinyin(s) for s in syllables if s != "_"]
        if syllables:
            words.append("".join(syllables))
    return tuple(words)


def plan_segments(items: list[Item], cantonese: bool = False) -> tuple[list[Segment], list[str]]:
    """Split one piece into espeak calls. Returns the segments and the tags that were not voiced."""
    han_lang = "yue" if cantonese else "zh"
    has_han = any(isinstance(i, PinyinSyllable) or (isinstance(i, TextRun) and re.search(f"[{_HAN}]", i.text))
                  for i in items)
    plan = _SegmentPlan(han_lang, default_lang=han_lang if has_han else "en")
    for item in items:
        if isinstance(item, PinyinSyllable):
            plan.current("zh").words.append(espeak_pinyin(item.numeric))
        elif isinstance(item, CmuWord):
            seg = plan.current("en")
            seg.words.append(f"[[{arpabet_to_espeak(item.phones)}]]")
            seg.phoneme_input = True
        elif isinstance(item, Tag):
            plan.tag(item.token)
        elif isinstance(item, TextRun):
            plan.text(item.text)
    return [s for s in plan.segments if s.lang == "pause" or s.has_speech()], plan.unvoiced


class _SegmentPlan:
    """The segments planned so far, and the emphasis state the next word gets."""

    def __init__(self, han_lang: str, default_lang: str):
        self.han_lang, self.default_lang = han_lang, default_lang
        self.segments: list[Segment] = []
        self.unvoiced: list[str] = []
        self.emphasis = False

    def current(self, lang: str) -> Segment:
        """The segment the next word in `lang` goes to (a new one at a change of language or emphasis)."""
        last = self.segments[-1] if self.segments else None
        if last is None or last.lang != lang or last.emphasis != self.emphasis or _ends_sentence(last):
            last = Segment(lang=lang, emphasis=self.emphasis)
            self.segments.append(last)
        return last

    def add_pause(self, seconds: float) -> None:
        if self.segments and self.segments[-1].lang == "pause":
            self.segments[-1].pause += seconds
        else:
            self.segments.append(Segment(lang="pause", pause=seconds))

    def tag(self, token: str) -> None:
        if token == "<strong>":
            self.emphasis = True
        elif token == "</strong>":
            self.emphasis = False
        elif token in BREATH_PAUSES:
            self.add_pause(BREATH_PAUSES[token])
        elif token in SILENT_TAGS or token in ("<laughter>", "</laughter>"):
            self.unvoiced.append(token)
            if not token.startswith("</"):
                self.add_pause(UNRENDERED_PAUSE)
        # <|endofprompt|> and other control tokens carry no sound

    def text(self, text: str) -> None:
        segments = self.segments
        for m in _TOKEN.finditer(text):
            kind, value = m.lastgroup, m.group()
            if kind == "han":
                if self.han_lang == "yue":
                    self.current("yue").words.append(value)
                else:
                    self.current("zh").words.extend(mandarin_words(value))
            elif kind == "latin":
                self.current("en").words.append(value)
            elif kind == "num":
                lang = segments[-1].lang if segments and segments[-1].lang != "pause" else self.default_lang
                self.current(lang).words.append(value)
            elif kind == "other" and value in _PAUSES:
                if segments and segments[-1].lang != "pause":
                    segments[-1].words.append(_PAUSES[value])


def _ends_sentence(segment: Segment) -> bool:
    return bool(segment.words) and segment.words[-1] in _SENTENCE_END
