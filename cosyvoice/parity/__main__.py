"""python -m cosyvoice.parity --model-dir DIR [--audio-dir DIR] [--device cuda]: one line per case, non-zero
exit on FAIL/SKIP. --device runs the llm, flow, hift and tts families' models there in float32 (TF32 off),
with the official tolerances; tokenizer and frontend always run on CPU."""
from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from pathlib import Path

import torch

from cosyvoice.parity import DEVICE_FAMILIES, FAMILIES, CaseResult


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cosyvoice.parity", description=__doc__)
    parser.add_argument("--model-dir", required=True, type=Path)
    parser.add_argument("--audio-dir", type=Path, default=Path(__file__).resolve().parents[3] / "shared" / "audio")
    parser.add_argument("--only", nargs="*", choices=FAMILIES, help="run only these families")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] for the llm, flow, hift and tts families")
    args = parser.parse_args(argv)
    if not (args.model_dir / "cases").is_dir():
        print(f"{args.model_dir}: no cases/ directory; point --model-dir at a fixture dir", file=sys.stderr)
        return 2

    if args.device != "cpu":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False   # float32 means float32
    results: list[CaseResult] = []
    for family in args.only or FAMILIES:
        module = importlib.import_module(f"cosyvoice.parity.{family}")
        where = {"device": args.device} if family in DEVICE_FAMILIES else {}
        try:
            for result in module.run(args.model_dir, args.audio_dir, **where):
                print(result.line(), flush=True)
                results.append(result)
        except Exception as err:  # a crash in one family must not hide the others
            traceback.print_exc()
            result = CaseResult(f"{family}.*", None, 0.0, False, f"error: {err}")
            print(result.line(), flush=True)
            results.append(result)

    failed = [r for r in results if not r.passed]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed or not results else 0


if __name__ == "__main__":
    sys.exit(main())
