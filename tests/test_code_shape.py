"""House style kept by a test: every function in cosyvoice/ is under 60 lines, from its `def` line to
its last line (a longer one is split into named helpers)."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "cosyvoice"
MAX_LINES = 60


def function_lengths(root: Path) -> list[tuple[int, str]]:
    """(lines, "path:line name") of every function and method under `root`."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                where = f"{path.relative_to(root.parent)}:{node.lineno} {node.name}"
                found.append((node.end_lineno - node.lineno + 1, where))
    return found


def test_every_function_in_the_package_is_under_60_lines():
    lengths = function_lengths(PACKAGE)
    assert len(lengths) > 500            # the walk really found the package's functions
    too_long = sorted((n, where) for n, where in lengths if n >= MAX_LINES)
    assert not too_long, "split these into named helpers: " + "; ".join(f"{w} ({n} lines)" for n, w in too_long)
