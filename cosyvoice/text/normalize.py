"""Text normalization (placeholder, filled in next)."""
from __future__ import annotations


def normalize_text(text: str, default_lang: str = "zh") -> str:
    return text
