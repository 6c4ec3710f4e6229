"""A job's lines, and how each kind of input becomes them.

Inputs: a JSON body (`lines` of strings or objects), an OpenAI Batch JSONL file (one
`{"custom_id", "method": "POST", "url": "/v1/audio/speech", "body": {...}}` per line), plain JSONL,
a `.txt` book (a line per paragraph, long paragraphs split at sentence ends), a `.csv` script (a
line per row) and an `.srt` file (a line per cue, with the cue's time slot to fit). Every mistake is
a UserInputError naming the input line, so the whole job is refused before anything is stored.
"""
from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from cosyvoice.errors import UserInputError

MAX_LINES = 10_000
MAX_INPUT_BYTES = 20 * 2**20
MAX_CUSTOM_ID = 64
FORMATS = ("json", "batch", "jsonl", "txt", "csv", "srt")
LINE_FIELDS = ("voice", "mode", "instructions", "seed", "speed", "normalize")
SENTENCE_END = re.compile(r"(?<=[。！？!?；;.…])\s*")


@dataclass
class LineSpec:
    """One line as submitted; the service checks text, voice, mode, seed and speed when it is voiced."""
    custom_id: str
    text: str
    voice: str | None = None
    mode: str | None = None
    instructions: str = ""
    seed: int | None = None
    speed: float = 1.0
    normalize: bool = True
    slot_start: float | None = None     # .srt cues: where the line must sit in the stitched track
    slot_end: float | None = None

    def fields(self) -> dict:
        return asdict(self)


def _where(number: int) -> str:
    return f"Input line {number}"


def line_from_object(obj: Any, number: int, defaults: dict, max_chars: int) -> LineSpec:
    """A line from a JSON object (`text` or OpenAI's `input`), defaults filled from the job."""
    if isinstance(obj, str):
        obj = {"text": obj}
    if not isinstance(obj, dict):
        raise UserInputError(f"{_where(number)}: expected text or an object, got {type(obj).__name__}.")
    text = obj.get("text", obj.get("input"))
    if not isinstance(text, str) or not text.strip():
        raise UserInputError(f"{_where(number)}: the text is missing or empty (give 'text' or 'input').")
    if len(text) > max_chars:
        raise UserInputError(f"{_where(number)}: the text is {len(text)} characters; the limit per line is "
                             f"{max_chars}. Split it, or submit it as a .txt book, which is split for you.")
    custom_id = obj.get("custom_id", str(number))
    if not isinstance(custom_id, (str, int)) or not str(custom_id).strip() or len(str(custom_id)) > MAX_CUSTOM_ID:
        raise UserInputError(f"{_where(number)}: custom_id must be text of 1–{MAX_CUSTOM_ID} characters.")
    merged = {**defaults, **{k: v for k, v in obj.items() if k in LINE_FIELDS and v is not None}}
    spec = LineSpec(custom_id=str(custom_id).strip(), text=text.strip())
    try:
        if merged.get("voice") is not None:
            spec.voice = str(merged["voice"])
        if merged.get("mode") is not None:
            spec.mode = str(merged["mode"])
        spec.instructions = str(merged.get("instructions") or "")
        if merged.get("seed") not in (None, ""):
            spec.seed = int(merged["seed"])
        spec.speed = float(merged.get("speed", 1.0))
        spec.normalize = bool(merged.get("normalize", True))
    except (TypeError, ValueError):
        raise UserInputError(f"{_where(number)}: seed must be a whole number and speed a number.") from None
    if not 0.5 <= spec.speed <= 2.0:
        raise UserInputError(f"{_where(number)}: speed {spec.speed:g} is out of range; choose between 0.5 and 2.0.")
    return spec


def _batch_line(obj: Any, number: int, defaults: dict, max_chars: int) -> LineSpec:
    if not isinstance(obj, dict) or not isinstance(obj.get("body"), dict):
        raise UserInputError(f"{_where(number)}: an OpenAI Batch line needs custom_id, method, url and body.")
    if obj.get("url") != "/v1/audio/speech" or str(obj.get("method", "POST")).upper() != "POST":
        raise UserInputError(f"{_where(number)}: only POST /v1/audio/speech lines can be voiced; got "
                             f"{str(obj.get('method'))[:10]} {str(obj.get('url'))[:60]}.")
    if "custom_id" not in obj:
        raise UserInputError(f"{_where(number)}: custom_id is required in an OpenAI Batch file.")
    return line_from_object({**obj["body"], "custom_id": obj["custom_id"]}, number, defaults, max_chars)


def split_paragraph(text: str, max_chars: int) -> list[str]:
    """A paragraph as lines of at most max_chars, cut at sentence ends (or hard, for one huge sentence)."""
    lines, current = [], ""
    for sentence in (s for s in SENTENCE_END.split(text) if s.strip()):
        while len(sentence) > max_chars:
            if current:
                lines.append(current)
                current = ""
            lines.append(sentence[:max_chars])
            sentence = sentence[max_chars:]
        joiner = "" if not current or re.match(r"[\u3000-\u9fff]", sentence) else " "
        if current and len(current) + len(joiner) + len(sentence) > max_chars:
            lines.append(current)
            current = sentence
        else:
            current = current + joiner + sentence if current else sentence
    if current.strip():
        lines.append(current)
    return [line.strip() for line in lines if line.strip()]


def _srt_lines(text: str, defaults: dict, max_chars: int) -> list[LineSpec]:
    import srt

    try:
        cues = list(srt.parse(text))
    except srt.SRTParseError as err:
        raise UserInputError(f"The .srt file does not parse: {str(err)[:200]}") from None
    lines = []
    for number, cue in enumerate(cues, 1):
        content = " ".join(cue.content.split())
        spec = line_from_object({"text": content, "custom_id": str(cue.index)}, number, defaults, max_chars)
        spec.slot_start, spec.slot_end = cue.start.total_seconds(), cue.end.total_seconds()
        if spec.slot_end <= spec.slot_start:
            raise UserInputError(f"Cue {cue.index}: it ends before it starts.")
        lines.append(spec)
    return lines


def _csv_lines(text: str, defaults: dict, max_chars: int) -> list[LineSpec]:
    rows = list(csv.reader(io.StringIO(text)))
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if not rows:
        return []
    header = [cell.strip().lower() for cell in rows[0]]
    if "text" in header:
        return [line_from_object(dict(zip(header, row)), number, defaults, max_chars)
                for number, row in enumerate(rows[1:], 2)]
    return [line_from_object({"text": row[0]}, number, defaults, max_chars) for number, row in enumerate(rows, 1)]


def _jsonl_objects(text: str) -> list[tuple[int, Any]]:
    objects = []
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            objects.append((number, json.loads(raw)))
        except json.JSONDecodeError as err:
            raise UserInputError(f"{_where(number)}: not valid JSON ({err.msg}).") from None
    return objects


def guess_format(filename: str, text: str) -> str:
    suffix = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    if suffix in ("txt", "csv", "srt"):
        return suffix
    if suffix in ("jsonl", "json"):
        first = next((line for line in text.splitlines() if line.strip()), "")
        return "batch" if '"url"' in first and '"body"' in first else "jsonl"
    raise UserInputError(f"Cannot tell the format of {filename!r}: name it .txt, .csv, .srt or .jsonl.")


def parse_input(text: str, fmt: str, defaults: dict, max_chars: int) -> list[LineSpec]:
    """Lines from a file's text; refused whole when any line is wrong, empty, duplicated or too many."""
    if fmt == "txt":
        paragraphs = [p for p in re.split(r"\n\s*\n", text.replace("\r\n", "\n")) if p.strip()]
        pieces = [piece for p in paragraphs for piece in split_paragraph(" ".join(p.split()), max_chars)]
        lines = [line_from_object(piece, n, defaults, max_chars) for n, piece in enumerate(pieces, 1)]
    elif fmt == "csv":
        lines = _csv_lines(text, defaults, max_chars)
    elif fmt == "srt":
        lines = _srt_lines(text, defaults, max_chars)
    elif fmt in ("batch", "jsonl"):
        make = _batch_line if fmt == "batch" else line_from_object
        lines = [make(obj, number, defaults, max_chars) for number, obj in _jsonl_objects(text)]
    else:
        raise UserInputError(f"Unknown input format {fmt!r}; use one of {', '.join(FORMATS)}.")
    return check_lines(lines)


def check_lines(lines: list[LineSpec]) -> list[LineSpec]:
    if not lines:
        raise UserInputError("The job has no lines: the input holds no text.")
    if len(lines) > MAX_LINES:
        raise UserInputError(f"The job has {len(lines)} lines; the limit is {MAX_LINES}. Split it into several jobs.")
    seen: set[str] = set()
    for line in lines:
        if line.custom_id in seen:
            raise UserInputError(f"custom_id {line.custom_id!r} appears twice; each line needs its own.")
        seen.add(line.custom_id)
    return lines
