"""The in-process request registry: where every recent request is (state, stage, progress, timings).

The service writes it (its stages and its Admission queue); ui/runs.py only closes one whose page left
or cancelled it. The Backend tab reads it, and so does the JSON log (the stage on each line).
It keeps the last `keep` jobs, so memory stays bounded however long the app runs.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field

STATES = ("queued", "running", "done", "failed", "refused", "cancelled")
FINAL = ("done", "failed", "refused", "cancelled")     # a final state may carry why: "done (page closed)"


@dataclass
class RequestRecord:
    id: str
    mode: str
    state: str = "queued"
    stage: str = "validate"
    progress: str = ""
    queue_position: int | None = None
    received_at: float = field(default_factory=time.time)
    started_at: float | None = None        # admitted to a worker
    finished_at: float | None = None
    queue_wait_s: float | None = None
    audio_s: float | None = None
    rtf: float | None = None
    error: str = ""

    def elapsed_s(self, now: float | None = None) -> float:
        return ((self.finished_at or now or time.time()) - self.received_at)

    def row(self, now: float | None = None) -> dict:
        fields = asdict(self)
        fields["elapsed_s"] = round(self.elapsed_s(now), 1)
        return fields


class RequestRegistry:
    def __init__(self, keep: int = 50):
        self.keep = keep
        self._jobs: OrderedDict[str, RequestRecord] = OrderedDict()
        self._lock = threading.Lock()

    def open(self, job_id: str, mode: str) -> RequestRecord:
        with self._lock:
            job = RequestRecord(job_id, mode)
            self._jobs[job_id] = job
            self._jobs.move_to_end(job_id)
            while len(self._jobs) > self.keep:
                self._jobs.popitem(last=False)
            return job

    def update(self, job_id: str, **changes) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return
            for key, value in changes.items():
                setattr(job, key, value)
            if str(changes.get("state", "")).split(" ")[0] in FINAL and job.finished_at is None:
                job.finished_at = time.time()

    def end_unattended(self, job_id: str, state: str, why: str) -> None:
        """A job that ended without the page that asked for it (closed, or cancelled): its state says so,
        e.g. "done (page closed)", so the Backend never shows a ghost "running"."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is not None and (job.state.split(" ")[0] not in FINAL or job.state == state):
            self.update(job_id, state=f"{state} ({why})", **({"stage": state} if state == "cancelled" else {}))

    def get(self, job_id: str) -> RequestRecord | None:
        with self._lock:
            return self._jobs.get(job_id)

    def stage_of(self, job_id: str) -> str | None:
        job = self.get(job_id)
        return job.stage if job else None

    def snapshot(self) -> list[dict]:
        """Newest first, as plain rows."""
        now = time.time()
        with self._lock:
            return [job.row(now) for job in reversed(self._jobs.values())]
