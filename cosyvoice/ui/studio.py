"""Small pieces of the 合成 Synthesize tab that are about showing things, not deciding them: which
instruction presets this engine renders, a spoken-length estimate for Preview, and the seed box's range.
"""
from __future__ import annotations

import re

from cosyvoice.engines.base import Style
from cosyvoice.text.instruct import PRESETS

PRESET_INFO = "⚠️ marks a preset this engine cannot render (it is spoken without it)"
# Measured on the engines' output at speed 1: about 4 Chinese characters or 2.6 English words a second.
SECONDS_PER_HANZI = 0.25
SECONDS_PER_WORD = 0.38
_HANZI = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_WORD = re.compile(r"[A-Za-z0-9]+(?:['’][A-Za-z]+)?")
_PAUSE = re.compile(r"\[pause:([\d.]+)\]")


def preset_choices(engine) -> list[tuple[str, str]]:
    """(label, instruction) per preset; labels of those the engine would drop get a ⚠️ and say so."""
    choices = []
    for label, instruction in PRESETS:
        dropped = engine.style_notices(Style(mode="instruct", instruct_text=instruction))
        choices.append((f"⚠️ {label} (not rendered by {engine.name})" if dropped else label, instruction))
    return choices


def spoken_length(text: str) -> str:
    """About how long `text` takes to say, e.g. "≈ 8.4 min of audio"; marked as an estimate."""
    pauses = sum(float(s) for s in _PAUSE.findall(text) if s.replace(".", "", 1).isdigit())
    plain = _PAUSE.sub(" ", text)
    seconds = len(_HANZI.findall(plain)) * SECONDS_PER_HANZI + len(_WORD.findall(plain)) * SECONDS_PER_WORD + pauses
    shown = f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"
    return f"≈ {shown} of audio at speed 1 (estimate)"


def seed_problem(seed, maximum: int) -> str | None:
    """The seed box offers 0..maximum; a negative number is explained, not silently made random."""
    if isinstance(seed, (int, float)) and not isinstance(seed, bool) and seed < 0:
        return (f"Seed {seed:g} is negative. Use a whole number from 0 to {maximum} (the same seed gives the "
                f"same audio), or press 🎲 for a random one.")
    return None
