"""Our engine stands alone: nothing in cosyvoice/ imports torchaudio, hyperpyyaml, matcha,
x_transformers, omegaconf or the official CosyVoice code."""
from __future__ import annotations

import ast

from conftest import ROOT

FORBIDDEN = ("torchaudio", "hyperpyyaml", "matcha", "x_transformers", "omegaconf")
OFFICIAL_PACKAGES = ("cosyvoice.cli", "cosyvoice.llm", "cosyvoice.flow", "cosyvoice.hifigan", "cosyvoice.utils",
                     "cosyvoice.tokenizer", "cosyvoice.transformer", "cosyvoice.dataset")


def imported_modules(path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_no_forbidden_imports():
    files = sorted((ROOT / "cosyvoice").rglob("*.py")) + [ROOT / "app.py"]
    assert len(files) > 20
    offenders = []
    for path in files:
        for name in imported_modules(path):
            top = name.split(".")[0]
            if top in FORBIDDEN or any(name == p or name.startswith(p + ".") for p in OFFICIAL_PACKAGES):
                offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert offenders == []


def test_the_engine_and_prompt_loading_need_only_what_a_gpu_box_has():
    """bench/gpu_check.sh runs the engine on a machine with torch, numpy and onnxruntime plus the few
    wheels it carries (bench/gpu_bundle.sh): no scipy, pydantic or gradio there."""
    import subprocess
    import sys

    blocked = "import sys\nfor name in ('scipy', 'gradio', 'fastapi', 'pydantic', 'librosa'):\n    sys.modules[name] = None\n"
    code = blocked + "import cosyvoice.audio.prompt, cosyvoice.engines.cosyvoice3, cosyvoice.parity.__main__\n"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
