"""Command line: `python -m cosyvoice synth|text|download …`.

`synth` goes through the same SynthesisService as the WebUI, so it validates, logs and saves alike.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _synth(argv: list[str]) -> int:
    from .engines.registry import DEFAULT_MODEL_DIR, ENGINE_CHOICES, create_engine
    from .errors import StudioError
    from .log import flush, setup_logging
    from .modes import MODE_IDS
    from .service import ServiceConfig, SynthesisRequest, SynthesisService
    from .text.frontend import TextFrontend

    parser = argparse.ArgumentParser(prog="python -m cosyvoice synth", description="Synthesise one text to a WAV file.")
    parser.add_argument("--mode", choices=MODE_IDS, default=MODE_IDS[0])
    parser.add_argument("--text", required=True)
    parser.add_argument("--prompt-wav", required=True)
    parser.add_argument("--prompt-text", default="")
    parser.add_argument("--instruct", default="", help="instruction for --mode instruct, e.g. 请用四川话说")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--no-normalize", action="store_true")
    parser.add_argument("--out", type=Path, help="also copy the result here")
    parser.add_argument("--engine", choices=ENGINE_CHOICES, default="auto")
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32")
    parser.add_argument("--outputs-dir", type=Path, default=ROOT / "outputs")
    parser.add_argument("--log-dir", type=Path, default=ROOT / "logs")
    parser.add_argument("--g2p-dict", type=Path, default=ROOT / "configs" / "G2P_replace_dict.jsonl")
    parser.add_argument("--max-text-chars", type=int, default=2000)
    args = parser.parse_args(argv)

    setup_logging(args.log_dir, stdout=False)
    try:
        engine = create_engine(args.engine, args.model_dir, args.device, args.precision)
        service = SynthesisService(engine, ServiceConfig(outputs_dir=args.outputs_dir,
                                                         max_text_chars=args.max_text_chars),
                                   TextFrontend(args.g2p_dict))
        request = SynthesisRequest(text=args.text, mode=args.mode, prompt_wav=args.prompt_wav,
                                   prompt_text=args.prompt_text, instruct_text=args.instruct, seed=args.seed,
                                   speed=args.speed, stream=args.stream, normalize=not args.no_normalize)
        result = service.synthesize(request)
    except StudioError as err:
        flush()
        print(f"error: {err}", file=sys.stderr)
        return 1
    flush()
    for notice in result.notices:
        print(f"note: {notice}", file=sys.stderr)
    path = result.path
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(f".{args.out.name}.partial")
        shutil.copyfile(result.path, tmp)
        tmp.replace(args.out)
        path = args.out
    print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"synth": "synthesise text to a WAV file", "text": "show what the text frontend makes of a text",
                "download": "download the Fun-CosyVoice3-0.5B model directory"}
    if not argv or argv[0] not in commands:
        print("usage: python -m cosyvoice {synth,text,download} …\n" +
              "\n".join(f"  {name:<9} {what}" for name, what in commands.items()), file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "synth":
        return _synth(rest)
    if command == "text":
        from .text.cli import main as text_main
        return text_main(rest)
    from .download import main as download_main
    return download_main(rest)


if __name__ == "__main__":
    sys.exit(main())
