"""The embedded lite engine (espeak-ng + WORLD voice matching)."""
from .engine import LiteEngine

__all__ = ["LiteEngine"]
