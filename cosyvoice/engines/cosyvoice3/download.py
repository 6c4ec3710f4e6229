"""python -m cosyvoice download [--model-dir DIR] [--source modelscope|huggingface]

Fetches the released Fun-CosyVoice3-0.5B model dir (repo FunAudioLLM/Fun-CosyVoice3-0.5B-2512) with
modelscope's or huggingface_hub's snapshot_download, whichever is installed (both optional), then
checks that every file the engine needs is there. Exit code 0 only for a complete model dir.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Callable

from cosyvoice.engines.cosyvoice3.model_dir import DEFAULT_MODEL_DIR, is_complete, missing_files

REPO_ID = "FunAudioLLM/Fun-CosyVoice3-0.5B-2512"
SOURCES = {
    # source name -> (module that has snapshot_download, pip package)
    "modelscope": ("modelscope", "modelscope"),
    "huggingface": ("huggingface_hub", "huggingface_hub"),
}
EXIT_OK, EXIT_FAILED, EXIT_NO_LIBRARY = 0, 1, 2


class _NoLibrary(Exception):
    pass


def _snapshot_function(source: str) -> Callable:
    module_name, package = SOURCES[source]
    try:
        module = importlib.import_module(module_name)
        return getattr(module, "snapshot_download")
    except ImportError as err:
        raise _NoLibrary(f"{source} downloads need the `{package}` package: pip install {package}") from err
    except AttributeError as err:
        raise _NoLibrary(f"the installed `{package}` has no snapshot_download; upgrade it: "
                         f"pip install -U {package}") from err


def _pick_source(requested: str) -> tuple[str, Callable]:
    if requested != "auto":
        return requested, _snapshot_function(requested)
    for source in SOURCES:
        try:
            return source, _snapshot_function(source)
        except _NoLibrary:
            continue
    raise _NoLibrary("neither modelscope nor huggingface_hub is installed; install one of them: "
                     "pip install modelscope   (or: pip install huggingface_hub)")


def _fetch(source: str, snapshot_download: Callable, repo_id: str, model_dir: Path) -> None:
    if source == "modelscope":
        snapshot_download(repo_id, local_dir=str(model_dir))
    else:
        snapshot_download(repo_id=repo_id, local_dir=str(model_dir))


def _looks_offline(err: BaseException) -> bool:
    names = {type(e).__name__ for e in _chain(err)}
    offline_names = {"ConnectionError", "ConnectTimeout", "ConnectError", "Timeout", "ReadTimeout",
                     "TimeoutError", "MaxRetryError", "NewConnectionError", "NameResolutionError",
                     "LocalEntryNotFoundError", "gaierror", "OfflineModeIsEnabled"}
    return bool(names & offline_names) or any(isinstance(e, (ConnectionError, TimeoutError)) for e in _chain(err))


def _chain(err: BaseException | None) -> list[BaseException]:
    seen: list[BaseException] = []
    while err is not None and err not in seen:
        seen.append(err)
        err = err.__cause__ or err.__context__
    return seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cosyvoice download",
                                     description=f"Download the CosyVoice3 model ({REPO_ID}).")
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR,
                        help=f"where to put the model (default {DEFAULT_MODEL_DIR})")
    parser.add_argument("--source", choices=("auto", *SOURCES), default="auto",
                        help="download hub (default: modelscope if installed, else huggingface)")
    parser.add_argument("--repo", default=REPO_ID, help=f"model repo id (default {REPO_ID})")
    parser.add_argument("--force", action="store_true", help="download even if the dir is already complete")
    args = parser.parse_args(argv)
    model_dir: Path = args.model_dir

    if is_complete(model_dir) and not args.force:
        print(f"{model_dir} is already complete; nothing to do (use --force to download again)")
        return EXIT_OK
    try:
        source, snapshot_download = _pick_source(args.source)
    except _NoLibrary as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_NO_LIBRARY

    print(f"downloading {args.repo} from {source} into {model_dir} ...", flush=True)
    created = not model_dir.exists()
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
        _fetch(source, snapshot_download, args.repo, model_dir)
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_FAILED
    except Exception as err:  # hub libraries raise many types; the user needs one clear line
        if created and model_dir.is_dir() and not any(model_dir.iterdir()):
            model_dir.rmdir()                # leave no empty dir that looks like a model
        detail = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        if _looks_offline(err):
            print(f"error: cannot reach {source} ({detail}). This machine seems to be offline: "
                  f"download on a machine with internet access and copy the folder to {model_dir}, "
                  f"or try the other hub with --source.", file=sys.stderr)
        else:
            print(f"error: downloading {args.repo} from {source} failed ({detail}); "
                  f"run the command again to resume, or try --source.", file=sys.stderr)
        return EXIT_FAILED

    missing = missing_files(model_dir)
    if missing:
        print(f"error: the download finished but {model_dir} still lacks: {', '.join(missing)}",
              file=sys.stderr)
        return EXIT_FAILED
    print(f"model ready in {model_dir}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
