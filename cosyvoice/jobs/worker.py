"""Job workers: claim a line under a lease, voice it, write its file, record it — in every instance.

Interactive requests keep priority because job lines only ever hold `workers` of the service's
slots at once (default: the service's concurrency minus one, at least one), and each line enters
the service's own first-come queue like any request. A heartbeat renews this instance's leases while
a line is voiced; if the process dies, the lease runs out and another instance (or this one after a
restart) claims the line again. Failures: a refused line (bad text, unknown voice) fails at once
with the service's message; a busy server puts the line back without counting an attempt; other
errors are retried with exponential back-off up to `max_attempts`.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from loguru import logger
from prometheus_client import Counter, Gauge
from sqlalchemy.exc import SQLAlchemyError

from cosyvoice.errors import ServerBusyError, StudioError, UserInputError
from cosyvoice.ops.metrics import REGISTRY
from cosyvoice.ops.atomic import atomic_file
from cosyvoice.service.outputs import write_wav_atomic
from cosyvoice.jobs import result
from cosyvoice.jobs.store import Claim, JobStore
from cosyvoice.jobs.voicing import Voiced, voice_line

LINES = Counter("cosyvoice_job_lines_total", "Job lines by how they ended: done, failed, retried, lost_lease",
                ["state"], registry=REGISTRY)
PENDING = Gauge("cosyvoice_job_lines_queued", "Job lines waiting to be voiced, all instances (the batch queue)",
                registry=REGISTRY)
SPEED_LIMITS = (0.5, 2.0)
FIT_TOLERANCE_S = 0.02


@dataclass
class WorkerConfig:
    jobs_dir: Path
    workers: int = 1
    lease_s: float = 30.0
    poll_s: float = 0.5
    max_attempts: int = 3
    retry_base_s: float = 2.0


def line_request_id(job_id: str, idx: int) -> str:
    """The id a line's log lines and Backend-tab row carry: the job id and the line number."""
    return f"{job_id.removeprefix('job_')}.{idx + 1}"


class JobWorker:
    def __init__(self, store: JobStore, service, config: WorkerConfig):
        self.store, self.service, self.config = store, service, config
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self.log = logger.bind(req="jobs")

    def start(self) -> None:
        if self.config.workers <= 0:
            self.log.info("job workers off (--job-workers 0): this instance takes jobs but voices none")
            return
        for n in range(self.config.workers):
            thread = threading.Thread(target=self._loop, daemon=True, name=f"job-worker-{n}")
            thread.start()
            self._threads.append(thread)
        threading.Thread(target=self._heartbeat, daemon=True, name="job-heartbeat").start()
        self.log.info(f"{self.config.workers} job worker(s) as {self.owner}, lease {self.config.lease_s:g} s")

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    # ---- loops ----------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                claim = None if self.service.stats()["draining"] else self.store.claim(self.owner, self.config.lease_s)
            except SQLAlchemyError as err:
                self.log.warning(f"cannot reach the job database ({type(err).__name__}: {str(err)[:160]}); "
                                 f"trying again in 5 s")
                self._stop.wait(5.0)
                continue
            if claim is None:
                self._wake.wait(self.config.poll_s)
                self._wake.clear()
                continue
            try:
                self.process(claim)
            except SQLAlchemyError as err:
                self.log.warning(f"line {line_request_id(claim.job_id, claim.idx)}: the database failed while "
                                 f"recording it ({str(err)[:160]}); its lease will expire and it is voiced again")
            except Exception as err:        # a bug must not end the worker thread; the lease brings the line back
                self.log.exception(f"line {line_request_id(claim.job_id, claim.idx)}: internal error "
                                   f"{type(err).__name__}: {err}; it is voiced again when its lease expires")

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.config.lease_s / 3):
            try:
                self.store.renew(self.owner, self.config.lease_s)
                PENDING.set(self.store.counts().get("pending", 0))
            except SQLAlchemyError as err:
                self.log.warning(f"lease renewal failed ({str(err)[:160]}); retrying")

    # ---- one line ---------------------------------------------------------------------------
    def process(self, claim: Claim) -> None:
        line, rid = claim.line, line_request_id(claim.job_id, claim.idx)
        log = logger.bind(req=rid)
        if claim.attempts > self.config.max_attempts:     # workers died on it each time: do not let it kill more
            self.store.fail(claim, f"gave up: {claim.attempts - 1} workers stopped while voicing this line",
                            retry_in=None)
            LINES.labels("failed").inc()
            log.error(f"job {claim.job_id} line {line['custom_id']!r} failed: {claim.attempts - 1} workers "
                      f"stopped while voicing it")
            return
        log.info(f"job {claim.job_id} line {line['custom_id']!r} (attempt {claim.attempts}): voicing")
        try:
            voiced, fit_speed, misfit = self._render(line, rid)
        except UserInputError as err:
            self.store.fail(claim, str(err), retry_in=None)
            LINES.labels("failed").inc()
            log.warning(f"job {claim.job_id} line {line['custom_id']!r} failed: {err}")
            return
        except ServerBusyError as err:
            self.store.fail(claim, str(err), retry_in=self.config.retry_base_s, count_attempt=False)
            LINES.labels("retried").inc()
            log.info(f"line put back: {err}")
            return
        except (StudioError, OSError) as err:
            self._retry_or_fail(claim, err, log)
            return
        try:
            self._record(claim, voiced, fit_speed, misfit, log)
        except OSError as err:
            self._retry_or_fail(claim, OSError(f"the line's file could not be written in {self.config.jobs_dir}: "
                                               f"{err.strerror or err}"), log)

    def _retry_or_fail(self, claim: Claim, err: Exception, log) -> None:
        if claim.attempts >= self.config.max_attempts:
            self.store.fail(claim, f"gave up after {claim.attempts} attempts: {err}", retry_in=None)
            LINES.labels("failed").inc()
            log.error(f"job {claim.job_id} line {claim.line['custom_id']!r} failed after {claim.attempts} "
                      f"attempts: {err}")
            return
        delay = self.config.retry_base_s * 2 ** (claim.attempts - 1)
        self.store.fail(claim, str(err), retry_in=delay)
        LINES.labels("retried").inc()
        log.warning(f"line failed (attempt {claim.attempts} of {self.config.max_attempts}), retrying in "
                    f"{delay:g} s: {err}")

    def _render(self, line: dict, rid: str) -> tuple[Voiced, float, float | None]:
        """The line's audio; a line with a time slot is re-voiced faster (up to 2.0) until it fits."""
        speed = float(line["speed"])
        voiced = voice_line(self.service, line, rid)
        if line["slot_start"] is None:
            return voiced, speed, None
        slot = line["slot_end"] - line["slot_start"]
        for _ in range(3):
            seconds = len(voiced.samples) / voiced.sample_rate
            if seconds <= slot + FIT_TOLERANCE_S or speed >= SPEED_LIMITS[1]:
                break
            speed = min(SPEED_LIMITS[1], speed * seconds / slot * 1.03)
            voiced = voice_line(self.service, {**line, "seed": voiced.seed}, rid, speed=speed)
        seconds = len(voiced.samples) / voiced.sample_rate
        return voiced, speed, max(0.0, seconds - slot)

    @staticmethod
    def _remove_other_takes(kept: Path) -> None:
        """Earlier takes of this line: the regenerated one, or a file a killed worker wrote but never recorded
        (and its partial write); only the recorded take stays, so each line's audio exists once."""
        line_prefix = kept.name.split("-", 1)[0]
        for other in kept.parent.glob(f"*{line_prefix}-*"):
            if other not in (kept, result.pieces_path(kept)) and (other.name.startswith(line_prefix)
                                                                 or other.name.startswith(f".{line_prefix}")):
                other.unlink(missing_ok=True)

    def _record(self, claim: Claim, voiced: Voiced, fit_speed: float, misfit: float | None, log) -> None:
        relative = f"{claim.job_id}/lines/{claim.idx + 1:05d}-{claim.token[:10]}.wav"
        path = Path(self.config.jobs_dir) / relative
        write_wav_atomic(path, voiced.samples, voiced.sample_rate)
        with atomic_file(result.pieces_path(path), "w") as handle:      # subtitle cues per piece
            json.dump(voiced.pieces, handle, ensure_ascii=False)
        seconds = len(voiced.samples) / voiced.sample_rate
        accepted, _previous = self.store.complete(
            claim, self.owner, audio_path=relative, sample_rate=voiced.sample_rate, duration_s=seconds,
            used_seed=voiced.seed, fit_speed=fit_speed, misfit_s=misfit)
        if not accepted:
            path.unlink(missing_ok=True)
            result.pieces_path(path).unlink(missing_ok=True)
            LINES.labels("lost_lease").inc()
            log.warning(f"line {claim.line['custom_id']!r} was voiced, but its lease had run out and another "
                        f"worker took it over; this take is discarded so the job records the line once")
            return
        self._remove_other_takes(path)
        LINES.labels("done").inc()
        fit = f", fitted at speed {fit_speed:.2f}" if misfit is not None else ""
        over = f", {misfit:.2f} s longer than its slot" if misfit else ""
        log.success(f"job {claim.job_id} line {claim.line['custom_id']!r} voiced ({seconds:.2f} s, seed "
                    f"{voiced.seed}{fit}{over})")
