"""The embedded lite engine (espeak-ng + WORLD voice matching)."""
from cosyvoice.engines.lite.engine import LiteEngine

__all__ = ["LiteEngine"]
