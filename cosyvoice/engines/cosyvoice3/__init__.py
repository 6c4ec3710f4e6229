"""The neural CosyVoice3 engine (our own PyTorch implementation of the released model)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["CosyVoice3Engine"]

if TYPE_CHECKING:
    from cosyvoice.engines.cosyvoice3.engine import CosyVoice3Engine


def __getattr__(name: str) -> Any:
    # Imported on first use: importing a submodule (config, features, ...) must not pull in the
    # whole engine and onnxruntime.
    if name == "CosyVoice3Engine":
        from cosyvoice.engines.cosyvoice3.engine import CosyVoice3Engine
        return CosyVoice3Engine
    raise AttributeError(name)
