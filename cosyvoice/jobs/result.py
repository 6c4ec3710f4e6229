"""A job's result: the stitched track, SRT and WebVTT subtitles, a JSONL manifest and a zip of it all.

Everything is built from the lines the database records as done, each read from its one accepted
file, so a line voiced twice (a lost lease) can never appear twice. Lines follow each other with
`gap_ms` of silence (default none, so the track is exactly the sum of its lines); lines from an .srt
cue start at their slot (or right after the previous line, when that one overran its slot).
Subtitle times come from the rendered audio: a cue spans its line's audio, pauses included; a line
the service voiced in several pieces (a long paragraph) gets a cue per piece, from the piece spans
saved beside its file (`<line file>.pieces.json`).
"""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import soundfile as sf

from cosyvoice.ops.atomic import atomic_file
from cosyvoice.service.subtitles import Cue, srt_text, vtt_text


def timeline(job: dict, rows: list[dict]) -> list[tuple[dict, float]]:
    """(line, start second in the stitched track) for every done line, in order."""
    gap = float(job["options"].get("gap_ms", 0)) / 1000
    placed: list[tuple[dict, float]] = []
    cursor = 0.0
    for row in rows:
        if row["state"] != "done":
            continue
        if row["slot_start"] is not None:
            start = max(row["slot_start"], cursor)
        else:
            start = cursor + (gap if placed else 0.0)
        placed.append((row, start))
        cursor = start + row["duration_s"]
    return placed


def stitch(job: dict, rows: list[dict], jobs_dir: Path) -> tuple[np.ndarray, int, list[Cue]]:
    placed = timeline(job, rows)
    if not placed:
        return np.zeros(0, np.float32), 0, []
    rate = placed[0][0]["sample_rate"]
    parts: list[np.ndarray] = []
    cues: list = []
    cursor = 0
    for number, (row, start) in enumerate(placed, 1):
        samples, file_rate = sf.read(Path(jobs_dir) / row["audio_path"], dtype="float32", always_2d=False)
        if file_rate != rate:
            raise ValueError(f"line {row['custom_id']} is at {file_rate} Hz, the job at {rate} Hz")
        offset = int(round(start * rate))
        if offset > cursor:
            parts.append(np.zeros(offset - cursor, np.float32))
            cursor = offset
        begin = cursor / rate
        parts.append(samples)
        cursor += len(samples)
        cues += _line_cues(row, begin, cursor / rate, Path(jobs_dir) / row["audio_path"], len(cues) + 1)
    return np.concatenate(parts), rate, cues


def pieces_path(line_file: Path) -> Path:
    return Path(line_file).with_suffix(".pieces.json")


def _line_cues(row: dict, begin: float, end: float, line_file: Path, number: int) -> list[Cue]:
    """One cue for the line, or one per piece when the service voiced it in several."""
    try:
        pieces = json.loads(pieces_path(line_file).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pieces = []
    if not isinstance(pieces, list) or len(pieces) < 2:
        return [Cue(number, row["custom_id"], begin, end, row["text"])]
    return [Cue(number + n, row["custom_id"], begin + float(p["start"]), min(end, begin + float(p["end"])),
                str(p.get("text") or row["text"]), n + 1) for n, p in enumerate(pieces)]


def manifest_lines(job: dict, rows: list[dict], cues: list[Cue]) -> str:
    """One JSON object per line, shaped like an OpenAI Batch output file (custom_id, response, error)."""
    starts: dict[str, float] = {}
    for cue in cues:
        starts.setdefault(cue.custom_id, cue.start)
    out = []
    for row in rows:
        if row["state"] == "done":
            body = {"file": line_file_name(row), "duration_s": round(row["duration_s"], 3), "seed": row["used_seed"],
                    "start_s": round(starts.get(row["custom_id"], 0.0), 3), "sample_rate": row["sample_rate"]}
            if row["slot_start"] is not None:
                body.update(slot=[row["slot_start"], row["slot_end"]], fit_speed=round(row["fit_speed"], 3),
                            misfit_s=round(row["misfit_s"] or 0.0, 3))
            item = {"id": f"{job['id']}-{row['idx'] + 1}", "custom_id": row["custom_id"],
                    "response": {"status_code": 200, "body": body}, "error": None}
        else:
            item = {"id": f"{job['id']}-{row['idx'] + 1}", "custom_id": row["custom_id"], "response": None,
                    "error": {"code": row["state"], "message": row["error"] or f"line {row['state']}"}}
        out.append(json.dumps(item, ensure_ascii=False))
    return "\n".join(out) + "\n"


def line_file_name(row: dict) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in row["custom_id"])[:40]
    return f"lines/{row['idx'] + 1:05d}_{safe}.wav"


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def write_zip(job: dict, rows: list[dict], jobs_dir: Path, target: Path) -> Path:
    """stitched.wav, subtitles.srt/.vtt, manifest.jsonl and every line's file; written whole or not at all."""
    samples, rate, cues = stitch(job, rows, jobs_dir)
    with atomic_file(target) as handle, zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED) as archive:
        if rate:
            archive.writestr("stitched.wav", wav_bytes(samples, rate))
        archive.writestr("subtitles.srt", srt_text(cues))
        archive.writestr("subtitles.vtt", vtt_text(cues))
        archive.writestr("manifest.jsonl", manifest_lines(job, rows, cues))
        for row in rows:
            if row["state"] == "done":
                archive.write(Path(jobs_dir) / row["audio_path"], line_file_name(row))
    return target
