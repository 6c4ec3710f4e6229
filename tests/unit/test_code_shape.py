"""House style kept by a test: every function in cosyvoice/ is under 60 lines, from its `def` line to
its last line (a longer one is split into named helpers), and the packages import downward only, in the
order README's Layout draws them."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "cosyvoice"
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


# Higher imports lower, never the reverse; the front ends (same rank) may use each other's helpers.
LAYERS = {
    "__main__": 6, "server": 6, "ui": 6, "jobs": 6,
    "service": 5,
    "voices": 4,
    "audio": 3, "parity": 3,
    "engines": 2,
    "text": 1,
    "ops": 0, "settings": 0, "modes": 0, "errors": 0, "__init__": 0,
}
# settings takes the model dir's default names from that leaf module; the `text` CLI command counts
# with the engine's own tokenizer (a front end living beside the text package it drives).
UPWARD_ALLOWED = {("cosyvoice.settings", "cosyvoice.engines.cosyvoice3.model_dir"),
                  ("cosyvoice.text.cli", "cosyvoice.engines.cosyvoice3.tokenizer")}


def imports_of(path: Path) -> set[str]:
    """Every cosyvoice module `path` imports (lazily or not), as dotted names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cosyvoice"):
            found |= {f"{node.module}.{a.name}" for a in node.names} if node.module == "cosyvoice" else {node.module}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("cosyvoice.")}
    return found


def layer_of(module: str) -> str:
    return module.split(".")[1]


def test_packages_import_downward_only():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        for target in imports_of(path):
            if target in ("cosyvoice.__version__",) or (module, target) in UPWARD_ALLOWED:
                continue
            if LAYERS[layer_of(target)] > LAYERS[layer_of(module)]:
                upward.append(f"{module} imports {target}")
    assert len(list(PACKAGE.rglob("*.py"))) > 80
    assert not upward, "imports against the layers (README, Layout): " + "; ".join(upward)
