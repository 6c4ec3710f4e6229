"""Command line: `python -m cosyvoice synth|voices|text|download …`.

`synth` goes through the same SynthesisService as the WebUI: the flags are handed over as typed by the
user, and the service validates them, picks the mode ("auto"), logs and saves alike.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _synth_parser() -> argparse.ArgumentParser:
    from cosyvoice.modes import MODE_IDS
    from cosyvoice.service.synthesis import AUTO
    from cosyvoice.settings import EngineConfig, ServiceConfig, add_flags

    parser = argparse.ArgumentParser(prog="python -m cosyvoice synth", description="Synthesise one text to a WAV file.")
    parser.add_argument("--mode", choices=(AUTO, *MODE_IDS), default=AUTO,
                        help="auto (default): the service picks from the voice, transcript and instruction")
    parser.add_argument("--text", required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt-wav")
    source.add_argument("--voice", help="a saved voice's name or id (python -m cosyvoice voices list)")
    parser.add_argument("--prompt-text", default="")
    parser.add_argument("--instruct", default="", help="instruction for --mode instruct, e.g. 请用四川话说")
    parser.add_argument("--seed", default=None, help="a whole number 0..2^32-1 (checked by the service)")
    parser.add_argument("--speed", default="1.0", help="0.5..2.0 (checked by the service)")
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--no-normalize", action="store_true")
    parser.add_argument("--out", type=Path, help="also copy the result here (a file, or a folder to copy it into)")
    parser.add_argument("--log-dir", type=Path, default=ROOT / "logs")
    add_flags(parser, EngineConfig, ServiceConfig)
    return parser


def _synth(argv: list[str]) -> int:
    from cosyvoice.engines.registry import create_engine
    from cosyvoice.errors import StudioError
    from cosyvoice.ops.log import flush, setup_logging
    from cosyvoice.service.outputs import copy_atomic
    from cosyvoice.service.synthesis import SynthesisRequest, SynthesisService
    from cosyvoice.settings import EngineConfig, ServiceConfig, build
    from cosyvoice.text.frontend import TextFrontend

    args = _synth_parser().parse_args(argv)
    if args.prompt_wav and not Path(args.prompt_wav).is_file():       # the CLI reads the user's own files: say plainly what is missing
        print(f"error: prompt recording not found: {args.prompt_wav}", file=sys.stderr)
        return 1

    setup_logging(args.log_dir, stdout=False)
    try:
        service_config = build(ServiceConfig, args)
        engine = create_engine(build(EngineConfig, args))
        service = SynthesisService(engine, service_config, TextFrontend(service_config.g2p_dict))
        request = SynthesisRequest(text=args.text, mode=args.mode, prompt_wav=args.prompt_wav,
                                   prompt_text=args.prompt_text, instruct_text=args.instruct, seed=args.seed,
                                   speed=args.speed, stream=args.stream, normalize=not args.no_normalize,
                                   voice=args.voice)
        result = service.synthesize(request)
    except StudioError as err:
        flush()
        print(f"error: {err}", file=sys.stderr)
        return 1
    flush()
    for notice in result.notices:
        print(f"note: {notice}", file=sys.stderr)
    print(f"seed: {result.seed}", file=sys.stderr)
    path = result.saved
    if args.out:
        target = args.out / result.saved.name if args.out.is_dir() else args.out
        try:
            path = copy_atomic(result.saved, target)
        except OSError as err:
            print(f"error: the result is saved as {result.saved}, but copying it to {target} failed: "
                  f"{err.strerror or err}", file=sys.stderr)
            return 1
    print(path)
    return 0


def _voices_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cosyvoice voices", description="Manage saved voices.")
    parser.add_argument("--voices-dir", type=Path, default=ROOT / "voices")
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="save a prompt recording as a voice (features are made on first use)")
    add.add_argument("name")
    add.add_argument("audio", help="the prompt recording (3-15 s)")
    add.add_argument("--transcript", default="", help="what the recording says (needed for zero-shot)")
    add.add_argument("--language", default="")
    add.add_argument("--notes", default="")
    commands.add_parser("list", help="list saved voices (broken ones too)")
    rename = commands.add_parser("rename", help="give a voice a new name")
    rename.add_argument("name")
    rename.add_argument("new_name")
    delete = commands.add_parser("delete", help="delete a voice")
    delete.add_argument("name")
    export = commands.add_parser("export", help="write a voice to a zip file")
    export.add_argument("name")
    export.add_argument("zip", type=Path)
    load = commands.add_parser("import", help="add a voice from an exported zip file")
    load.add_argument("zip", type=Path)
    load.add_argument("--name", default=None, help="save it under another name")
    return parser


def _voices(argv: list[str]) -> int:
    """The voice library from the shell; the WebUI and the /v1 API see the same folder."""
    from cosyvoice.errors import StudioError
    from cosyvoice.voices.library import VoiceLibrary
    from loguru import logger

    args = _voices_parser().parse_args(argv)
    logger.remove()                 # the command prints its own outcome; library log lines are for the server
    try:
        return _voices_command(VoiceLibrary(args.voices_dir), args)
    except StudioError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def _voices_command(library, args: argparse.Namespace) -> int:
    if args.command == "add":
        if not Path(args.audio).is_file():
            print(f"error: recording not found: {args.audio}", file=sys.stderr)
            return 1
        entry = library.add(args.name, args.audio, args.transcript, args.language, args.notes)
        print(f"saved {entry.name} (id {entry.id}, {entry.duration:.2f} s)")
    elif args.command == "list":
        for entry in library.entries():
            if entry.broken:
                print(f"{entry.id}  BROKEN  {entry.problem}")
            else:
                transcript = entry.transcript[:40] or "(no transcript)"
                print(f"{entry.id}  {entry.name}  {entry.duration:.2f} s  {entry.created}  {transcript}")
    elif args.command == "rename":
        entry = library.rename(args.name, args.new_name)
        print(f"renamed to {entry.name} (id {entry.id})")
    elif args.command == "delete":
        entry = library.delete(args.name)
        print(f"deleted {entry.name} (id {entry.id})")
    elif args.command == "export":
        print(library.export_zip(args.name, args.zip))
    else:
        if not args.zip.is_file():
            print(f"error: archive not found: {args.zip}", file=sys.stderr)
            return 1
        entry = library.import_zip(args.zip, args.name)
        print(f"imported {entry.name} (id {entry.id})")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"synth": "synthesise text to a WAV file", "voices": "add|list|rename|delete|export|import saved voices",
                "text": "show what the text frontend makes of a text",
                "download": "download the Fun-CosyVoice3-0.5B model directory",
                "jobs": "submit|list|show|wait|download long-form and batch jobs on a running server"}
    if not argv or argv[0] not in commands:
        print("usage: python -m cosyvoice {synth,voices,text,download,jobs} …\n" +
              "\n".join(f"  {name:<9} {what}" for name, what in commands.items()), file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "synth":
        return _synth(rest)
    if command == "voices":
        return _voices(rest)
    if command == "text":
        from cosyvoice.text.cli import main as text_main
        return text_main(rest)
    if command == "jobs":
        from cosyvoice.jobs.cli import main as jobs_main
        return jobs_main(rest)
    from cosyvoice.engines.cosyvoice3.download import main as download_main
    return download_main(rest)


if __name__ == "__main__":
    sys.exit(main())
