"""History of results: a small JSON sidecar beside each outputs/ WAV, and the newest-first listing.

`output_..._<id>.json` holds what made `output_..._<id>.wav` (mode, voice, text, seed, speed, ...),
so the History tab can list, play and repeat results after a restart. Sidecars share the WAV's
name prefix, so the retention sweep removes them with their WAV.
"""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from cosyvoice.ops.atomic import atomic_file
from cosyvoice.service.outputs import PREFIX

TEXT_KEPT = 500          # characters of the text kept in a sidecar (enough to repeat typical requests)


def sidecar_path(wav: Path) -> Path:
    return Path(wav).with_suffix(".json")


def write_sidecar(wav: Path, record: dict) -> Path:
    """Write the record beside the WAV, whole or not at all."""
    path = sidecar_path(wav)
    with atomic_file(path, "w") as handle:
        json.dump({"file": Path(wav).name, **record}, handle, ensure_ascii=False)
    return path


def request_record(request, request_id: str, seconds: float, engine_name: str) -> dict:
    """The sidecar of one service request (a ValidRequest)."""
    return {"request_id": request_id, "created": datetime.now().isoformat(timespec="milliseconds"),
            "mode": request.mode.id, "voice": request.voice or "", "text": request.text[:TEXT_KEPT],
            "prompt_text": "" if request.voice else request.prompt_text, "instruct_text": request.instruct_text,
            "seed": request.seed, "speed": request.speed, "stream": request.stream, "normalize": request.normalize,
            "duration": round(seconds, 3), "engine": engine_name}


def list_history(outputs_dir: Path, limit: int = 50) -> list[dict]:
    """Records of the results still on disk, newest first; unreadable sidecars are skipped."""
    folder = Path(outputs_dir)
    if not folder.is_dir():
        return []
    records = []
    for path in folder.glob(f"{PREFIX}*.json"):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        wav = path.with_suffix(".wav")
        if isinstance(record, dict) and wav.is_file():
            record["path"] = str(wav)
            records.append(record)
    # a dialogue's turns (<dialogue id>-<n>) are listed as the dialogue, not one by one
    dialogues = {r.get("request_id") for r in records if r.get("mode") == "dialogue"}
    records = [r for r in records if str(r.get("request_id", "")).rsplit("-", 1)[0] not in dialogues
               or r.get("mode") == "dialogue"]
    records.sort(key=lambda r: (str(r.get("created", "")), r["path"]), reverse=True)
    return records[:limit]
