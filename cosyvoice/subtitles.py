"""Subtitles for one request: a cue per piece the engine voiced, timed from the rendered audio.

The service counts the samples of every chunk it hands on (pauses included) and records where each
piece starts and ends (`PieceSpan`, sample offsets). Those spans become cues here and go out as SRT
or WebVTT through the same writers jobs use (`cosyvoice.batch.result`). A long text gives a cue per
piece (the frontend packs short lines into one piece, so they share a cue); a written pause is the
gap between two cues. The limiter delays nothing overall, so sample offsets of the engine's stream
are offsets in the saved file.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .batch.result import Cue, srt_text, vtt_text

FORMATS = ("srt", "vtt")
_PROMPT_END = "<|endofprompt|>"
_MARKUP = re.compile(r"<\|[^|>]*\|>|</?[a-zA-Z][^>]*>|\[[^\]]*\]")


@dataclass(frozen=True)
class PieceSpan:
    """Where one piece's audio lies in the result: [start, end) in samples, and what it says."""
    start: int
    end: int
    text: str


def caption_text(piece: str) -> str:
    """What a viewer reads for a piece: its spoken text without the instruction or markup tags."""
    spoken = piece.rsplit(_PROMPT_END, 1)[-1]
    return " ".join(_MARKUP.sub(" ", spoken).split())


def cues_of(spans: list[dict], prefix: str = "") -> list[Cue]:
    """Cues from recorded spans ({"start", "end", "text"} in seconds), numbered from 1; empty text skipped."""
    cues: list[Cue] = []
    for span in spans:
        text = str(span.get("text", ""))
        start, end = float(span["start"]), float(span["end"])
        if text and end > start:
            cues.append(Cue(len(cues) + 1, f"{prefix}{len(cues) + 1}", start, end, text))
    return cues


def span_records(spans: list[PieceSpan], sample_rate: int) -> list[dict]:
    """The JSON form kept in the result's sidecar: seconds to the millisecond."""
    return [{"start": round(span.start / sample_rate, 3), "end": round(span.end / sample_rate, 3),
             "text": caption_text(span.text)} for span in spans]


def render(spans: list[dict], fmt: str) -> str:
    """The subtitles of recorded spans as SRT or WebVTT text."""
    if fmt not in FORMATS:
        raise ValueError(f"subtitles are srt or vtt, not {fmt!r}")
    cues = cues_of(spans, "piece-")
    return srt_text(cues) if fmt == "srt" else vtt_text(cues)


MEDIA_TYPES = {"srt": "application/x-subrip; charset=utf-8", "vtt": "text/vtt; charset=utf-8"}
