"""Subtitles for one request: a cue per piece the engine voiced, timed from the rendered audio.

The service counts the samples of every chunk it hands on (pauses included) and records where each
piece starts and ends (`PieceSpan`, sample offsets). Those spans become cues here and go out as SRT
or WebVTT; jobs write their subtitles with the same `Cue` and writers. A long text gives a cue per
piece (the frontend packs short lines into one piece, so they share a cue); a written pause is the
gap between two cues. The limiter delays nothing overall, so sample offsets of the engine's stream
are offsets in the saved file.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

FORMATS = ("srt", "vtt")
_PROMPT_END = "<|endofprompt|>"
_MARKUP = re.compile(r"<\|[^|>]*\|>|</?[a-zA-Z][^>]*>|\[[^\]]*\]")


@dataclass
class Cue:
    index: int
    custom_id: str
    start: float
    end: float
    text: str
    part: int = 0          # 1, 2 … for the pieces of a line voiced in several; 0 for a line's one cue

    @property
    def cue_id(self) -> str:
        """Unique in the file (WebVTT requires it): the line's custom_id, #part for a piece."""
        return f"{self.custom_id}#{self.part}" if self.part else self.custom_id


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


def _clock(seconds: float, separator: str) -> str:
    millis = int(round(seconds * 1000))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def srt_text(cues: list[Cue]) -> str:
    return "".join(f"{cue.index}\n{_clock(cue.start, ',')} --> {_clock(cue.end, ',')}\n{cue.text}\n\n"
                   for cue in cues)


def vtt_text(cues: list[Cue]) -> str:
    body = "".join(f"{cue.cue_id}\n{_clock(cue.start, '.')} --> {_clock(cue.end, '.')}\n"
                   f"{cue.text.replace('-->', '→')}\n\n" for cue in cues)
    return "WEBVTT\n\n" + body
