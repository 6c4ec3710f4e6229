"""`python -m cosyvoice text "…"`: show what the frontend makes of a text."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cosyvoice.errors import UserInputError
from cosyvoice.text.g2p_dict import DEFAULT_G2P_DICT


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cosyvoice text",
        description="Print the normalized text, the markup the engines receive, and the sentence pieces.")
    parser.add_argument("text", nargs="+", help="text to analyse (several arguments are joined with spaces)")
    parser.add_argument("--no-normalize", action="store_true", help="leave numbers, dates and symbols as written")
    parser.add_argument("--g2p-dict", type=Path, default=DEFAULT_G2P_DICT, metavar="PATH",
                        help=f"G2P replace dictionary (JSONL; default {DEFAULT_G2P_DICT})")
    parser.add_argument("--max-piece-chars", type=int, default=80, metavar="N",
                        help="longest piece in reading units before splitting (default 80)")
    args = parser.parse_args(argv)
    if args.max_piece_chars < 1:
        parser.error("--max-piece-chars must be at least 1")
    if not args.g2p_dict.is_file():
        print(f"error: G2P dictionary not found: {args.g2p_dict}", file=sys.stderr)
        return 2

    from cosyvoice.text.frontend import TextFrontend

    frontend = TextFrontend(args.g2p_dict)
    try:
        result = frontend.process(" ".join(args.text), normalize=not args.no_normalize,
                                  max_piece_chars=args.max_piece_chars)
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for notice in result.notices:
        print(f"notice: {notice}", file=sys.stderr)
    print(f"normalized: {result.normalized}")
    print(f"markup:     {result.marked}")
    print(f"language:   {result.language}")
    print(f"pieces:     {len(result.pieces)}")
    width = len(str(len(result.pieces)))
    for number, piece in enumerate(result.pieces, start=1):
        print(f"  {number:>{width}}. {piece}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
