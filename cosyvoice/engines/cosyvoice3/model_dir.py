"""Is a CosyVoice3 model dir complete, and which one is it?

The layout is the released Fun-CosyVoice3-0.5B directory, read as is. `model.safetensors` in
CosyVoice-BlankEN is not needed: every LLM weight comes from llm.pt.
"""
from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from cosyvoice.errors import ModelDirError

DEFAULT_MODEL_DIR = Path("pretrained_models") / "Fun-CosyVoice3-0.5B"
QWEN_DIR = "CosyVoice-BlankEN"
LLM_WEIGHTS = "llm.pt"                   # the release's LLM checkpoint; a dir may hold others beside it (llm.rl.pt)

REQUIRED_FILES: tuple[str, ...] = (
    "cosyvoice3.yaml",
    LLM_WEIGHTS,                         # or the file chosen with llm_weights
    "flow.pt",
    "hift.pt",
    "campplus.onnx",
    "speech_tokenizer_v3.onnx",
    f"{QWEN_DIR}/config.json",
    f"{QWEN_DIR}/vocab.json",
    f"{QWEN_DIR}/merges.txt",
    f"{QWEN_DIR}/tokenizer_config.json",
)


def missing_files(model_dir: str | os.PathLike, llm_weights: str = LLM_WEIGHTS) -> list[str]:
    """Required files (relative paths) that are absent or empty, in REQUIRED_FILES order.

    llm_weights: the LLM checkpoint that will be loaded; it stands in for llm.pt in the list.
    """
    root = Path(model_dir)
    missing = []
    for name in REQUIRED_FILES:
        name = llm_weights if name == LLM_WEIGHTS else name
        path = root / name
        try:
            ok = path.is_file() and path.stat().st_size > 0
        except OSError:                      # dangling symlink, permissions
            ok = False
        if not ok:
            missing.append(name)
    return missing


def is_complete(model_dir: str | os.PathLike) -> bool:
    return Path(model_dir).is_dir() and not missing_files(model_dir)


def download_hint(model_dir: str | os.PathLike) -> str:
    return f"python -m cosyvoice download --model-dir {model_dir}"


def check_model_dir(model_dir: str | os.PathLike, llm_weights: str = LLM_WEIGHTS) -> Path:
    """Return the dir as a Path, or raise ModelDirError naming everything that is missing."""
    root = Path(model_dir)
    if not root.is_dir():
        raise ModelDirError(f"model dir {root} does not exist; get the model with: {download_hint(root)}")
    if not llm_weights or Path(llm_weights).name != llm_weights:
        raise ModelDirError(f"LLM weights {llm_weights!r}: give a file name inside the model dir, e.g. llm.pt or llm.rl.pt")
    missing = missing_files(root, llm_weights)
    if missing:
        raise ModelDirError(f"model dir {root} is incomplete, missing: {', '.join(missing)}; "
                            f"get the full model with: {download_hint(root)}")
    return root


_identity_lock = threading.Lock()
_identity_cache: dict[tuple, dict] = {}


def _stat_signature(root: Path, llm_weights: str) -> tuple:
    # Sizes and mtimes of every required file: a few stat calls, no reading of GB weights.
    signature = []
    for name in REQUIRED_FILES:
        name = llm_weights if name == LLM_WEIGHTS else name
        try:
            st = (root / name).stat()
            signature.append((name, st.st_size, st.st_mtime_ns))
        except OSError:
            signature.append((name, -1, -1))
    return tuple(signature)


def model_identity(model_dir: str | os.PathLike, llm_weights: str = LLM_WEIGHTS) -> dict:
    """Cheap identity for /version: name, path, yaml sha1, and a hash of file sizes + mtimes
    (of the LLM checkpoint actually loaded, `llm_weights`, in place of llm.pt).

    Only the small yaml is hashed, once per (path, sizes, mtimes); later calls cost ~10 stat calls.
    """
    root = Path(model_dir).resolve()
    signature = _stat_signature(root, llm_weights)
    key = (str(root), signature)
    with _identity_lock:
        cached = _identity_cache.get(key)
    if cached is not None:
        return dict(cached)
    yaml_path = root / "cosyvoice3.yaml"
    try:
        yaml_sha1 = hashlib.sha1(yaml_path.read_bytes()).hexdigest()
    except OSError:
        yaml_sha1 = None
    files_hash = hashlib.sha1(repr(signature).encode()).hexdigest()[:16]
    identity = {
        "name": root.name,
        "path": str(root),
        "yaml_sha1": yaml_sha1,
        "files_sha1": files_hash,
        "total_bytes": sum(size for _, size, _ in signature if size > 0),
        "complete": all(size > 0 for _, size, _ in signature),
    }
    with _identity_lock:
        if len(_identity_cache) > 32:        # files keep changing (e.g. a download in progress)
            _identity_cache.clear()
        _identity_cache[key] = identity
    return dict(identity)
