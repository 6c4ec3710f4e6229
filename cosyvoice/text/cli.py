"""`python -m cosyvoice text "…"`: show what the frontend makes of a text (the same preview the UI shows)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cosyvoice.errors import StudioError, UserInputError
from cosyvoice.text.g2p_dict import DEFAULT_G2P_DICT
from cosyvoice.text.split import DEFAULT_MAX_PIECE_UNITS, DEFAULT_MAX_SENTENCE_UNITS


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cosyvoice text",
        description="Print the normalized text, the markup the engines receive, and the pieces and pauses "
                    "it is read in. Pieces pack whole sentences up to ~80 units (zh characters, en tokens).")
    parser.add_argument("text", nargs="+", help="text to analyse (several arguments are joined with spaces)")
    parser.add_argument("--no-normalize", action="store_true", help="leave numbers, dates and symbols as written")
    parser.add_argument("--g2p-dict", type=Path, default=DEFAULT_G2P_DICT, metavar="PATH",
                        help=f"G2P replace dictionary (JSONL; default {DEFAULT_G2P_DICT})")
    parser.add_argument("--tokenizer", type=Path, metavar="DIR",
                        help="count English in this CosyVoice3 tokenizer's tokens (the model's CosyVoice-BlankEN "
                             "folder); without it English length is estimated")
    parser.add_argument("--max-piece-units", type=int, default=DEFAULT_MAX_PIECE_UNITS, metavar="N",
                        help=f"a new piece starts before it would pass N units (default {DEFAULT_MAX_PIECE_UNITS}; "
                             "the 60/20 minimum and merge lengths scale with it)")
    parser.add_argument("--max-sentence-units", type=int, default=DEFAULT_MAX_SENTENCE_UNITS, metavar="N",
                        help=f"only a sentence longer than N units is cut inside (default {DEFAULT_MAX_SENTENCE_UNITS})")
    parser.add_argument("--comma-split", action="store_true", help="also end sentences at commas")
    args = parser.parse_args(argv)
    if args.max_piece_units < 1 or args.max_sentence_units < 1:
        parser.error("--max-piece-units and --max-sentence-units must be at least 1")
    if not args.g2p_dict.is_file():
        print(f"error: G2P dictionary not found: {args.g2p_dict}", file=sys.stderr)
        return 2

    from cosyvoice.text.frontend import TextFrontend, format_preview

    count_tokens = None
    if args.tokenizer is not None:
        from cosyvoice.engines.cosyvoice3.tokenizer import CosyVoice3Tokenizer
        try:
            tokenizer = CosyVoice3Tokenizer(args.tokenizer)
        except (StudioError, OSError) as err:
            print(f"error: tokenizer in {args.tokenizer} cannot be loaded: {err}", file=sys.stderr)
            return 2
        count_tokens = lambda text: len(tokenizer.encode(text))  # noqa: E731

    frontend = TextFrontend(args.g2p_dict, count_tokens=count_tokens, max_sentence_units=args.max_sentence_units)
    text = " ".join(args.text).strip()
    if not text:
        print("error: the text is empty; give the text to analyse.", file=sys.stderr)
        return 1
    try:
        result = frontend.process(text, normalize=not args.no_normalize,
                                  max_piece_units=args.max_piece_units, comma_split=args.comma_split)
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for notice in result.notices:
        print(f"notice: {notice}", file=sys.stderr)
    print(format_preview(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
