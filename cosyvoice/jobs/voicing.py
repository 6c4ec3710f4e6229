"""The one place a job line meets the synthesis service.

`voice_line` turns a line's fields into a SynthesisRequest and runs it through
`SynthesisService.synthesize`, so a line gets the same admission (the service's worker slots and
queue), checks, messages and log lines as any request. A line's audio belongs to its job, so the
service hands the samples back instead of saving them in outputs/ and History (save=False).
A line without a mode gets the service's "auto" rule, like any other front end.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cosyvoice.service.admission import WORK_KIND
from cosyvoice.service.synthesis import AUTO, SynthesisRequest, SynthesisService


@dataclass
class Voiced:
    samples: np.ndarray
    sample_rate: int
    seed: int
    pieces: list[dict] = field(default_factory=list)   # the service's piece spans (seconds), for subtitles


def voice_line(service: SynthesisService, line: dict, request_id: str, speed: float | None = None) -> Voiced:
    """Voice one line (text, voice, mode, instructions, seed, speed, normalize); raises StudioError."""
    request = SynthesisRequest(text=line["text"], mode=line.get("mode") or AUTO, voice=line.get("voice"),
                               instruct_text=line.get("instructions") or "", seed=line.get("seed"),
                               speed=line.get("speed") if speed is None else speed,
                               normalize=line.get("normalize", True))
    kind = WORK_KIND.set("job")          # counted as a job line in /metrics' queue depth by kind
    try:
        result = service.synthesize(request, request_id, save=False)
    finally:
        WORK_KIND.reset(kind)
    assert result.samples is not None                     # save=False hands the audio back
    return Voiced(np.asarray(result.samples, dtype=np.float32).reshape(-1), result.sample_rate, result.seed,
                  list(result.pieces))
