"""Our features module, imported under the official code's nose.

Both projects call their package `cosyvoice`. When the official one is loaded, ours is reached by
stepping its modules out of sys.modules for the length of one import, then putting them back; our
modules stay reachable through the returned module object only.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

REPO = str(Path(__file__).resolve().parents[3])


def _is_cosyvoice(name: str) -> bool:
    return name == "cosyvoice" or name.startswith("cosyvoice.")


def _import_ours(module: str):
    official = {name: sys.modules.pop(name) for name in list(sys.modules) if _is_cosyvoice(name)}
    sys.path.insert(0, REPO)
    try:
        return importlib.import_module(module)
    finally:
        sys.path.remove(REPO)
        for name in [name for name in sys.modules if _is_cosyvoice(name)]:
            del sys.modules[name]
        sys.modules.update(official)


features = _import_ours("cosyvoice.engines.cosyvoice3.features")
