"""Command line: `python -m cosyvoice synth|text|download …`.

`synth` goes through the same SynthesisService as the WebUI, so it validates, logs and saves alike.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _synth(argv: list[str]) -> int:
    from .engines.registry import add_engine_args, engine_from_args
    from .errors import StudioError
    from .log import flush, setup_logging
    from .modes import MODE_IDS
    from .outputs import copy_atomic
    from .service import ServiceConfig, SynthesisRequest, SynthesisService, add_service_args
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
    parser.add_argument("--out", type=Path, help="also copy the result here (a file, or a folder to copy it into)")
    parser.add_argument("--log-dir", type=Path, default=ROOT / "logs")
    add_engine_args(parser)
    add_service_args(parser, ROOT)
    args = parser.parse_args(argv)
    if not Path(args.prompt_wav).is_file():       # the CLI reads the user's own files: say plainly what is missing
        print(f"error: prompt recording not found: {args.prompt_wav}", file=sys.stderr)
        return 1

    setup_logging(args.log_dir, stdout=False)
    try:
        engine = engine_from_args(args)
        service = SynthesisService(engine, ServiceConfig.from_args(args), TextFrontend(args.g2p_dict))
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
    print(f"seed: {result.seed}", file=sys.stderr)
    path = result.path
    if args.out:
        target = args.out / result.path.name if args.out.is_dir() else args.out
        try:
            path = copy_atomic(result.path, target)
        except OSError as err:
            print(f"error: the result is saved as {result.path}, but copying it to {target} failed: "
                  f"{err.strerror or err}", file=sys.stderr)
            return 1
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
