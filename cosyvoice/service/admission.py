"""Admission: the one queue in front of the engine (first come, first served, bounded).

A request takes a ticket, waits for one of `width` slots (telling its place every half second) and
gives the slot back when it ends. Width defaults to the engine's own parallelism; beyond `queue_size`
waiting requests the service answers "busy" at once. Draining (shutdown) refuses new tickets.
A ticket is counted by kind (`WORK_KIND`: "interactive", or "job" for a batch job's line), so /metrics
shows how much of the queue is people waiting and how much is job lines.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from contextvars import ContextVar
from functools import partial
from typing import Iterator

from cosyvoice.ops import metrics
from cosyvoice.errors import ServerBusyError
from cosyvoice.service.requests import RequestRegistry


KINDS = ("interactive", "job")
# Who is asking, set by the caller around a request (the job worker sets "job"); read when a ticket is taken.
WORK_KIND: ContextVar[str] = ContextVar("work_kind", default="interactive")


class Admission:
    def __init__(self, width: int, queue_size: int, requests: RequestRegistry):
        self.width, self.queue_size, self.requests = max(1, int(width)), max(0, int(queue_size)), requests
        self._changed = threading.Condition()      # a slot freed, a request queued or left
        self._queue: list[int] = []                # tickets of waiting requests, first come first
        self._kinds: dict[int, str] = {}           # kind of each waiting ticket
        self._next_ticket = 0
        self._active = 0
        self._draining = False
        metrics.BUSY_WORKERS.set_function(lambda: self._active)
        metrics.QUEUE_DEPTH.set_function(lambda: len(self._queue))
        for kind in KINDS:
            metrics.QUEUE_DEPTH_BY_KIND.labels(kind).set_function(partial(self.waiting, kind))

    def waiting(self, kind: str) -> int:
        """Tickets of one kind waiting for a slot."""
        return sum(1 for value in list(self._kinds.values()) if value == kind)

    def stats(self) -> dict:
        with self._changed:
            return {"busy_workers": self._active, "queue_depth": len(self._queue), "workers": self.width,
                    "queue_depth_by_kind": {kind: self.waiting(kind) for kind in KINDS},
                    "queue_size": self.queue_size, "draining": self._draining}

    def drain(self) -> None:
        """Stop admitting requests (shutdown); those already admitted run to the end."""
        with self._changed:
            self._draining = True

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._active or self._queue:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True

    @contextmanager
    def held(self, log, job_id: str) -> Iterator["_Ticket"]:
        """Enter the line (ServerBusyError when full); the ticket's `wait()` yields queue messages until
        a slot is free. Leaving the block frees the slot, or the place in line if never admitted."""
        ticket = _Ticket(self, self._enter(log), job_id, log)
        try:
            yield ticket
        finally:
            self._leave(ticket.number, ticket.admitted)

    def _enter(self, log) -> int:
        with self._changed:
            if self._draining:
                log.warning("refused: the server is shutting down")
                raise ServerBusyError("The server is shutting down for a restart. Please try again in a minute.")
            waiting = len(self._queue)
            if waiting >= self.queue_size and self._active >= self.width:
                log.warning(f"refused: server busy ({self._active} synthesising, {waiting} waiting)")
                raise ServerBusyError(
                    f"The server is busy: {self._active} requests are being synthesised and {waiting} are "
                    f"waiting. Please try again in a minute.")
            ticket = self._next_ticket
            self._next_ticket += 1
            self._queue.append(ticket)
            self._kinds[ticket] = WORK_KIND.get() if WORK_KIND.get() in KINDS else "interactive"
            return ticket

    def _try_take(self, ticket: int) -> tuple[bool, int, int]:
        with self._changed:
            if self._queue[0] == ticket and self._active < self.width:
                self._kinds.pop(self._queue.pop(0), None)
                self._active += 1
                return True, 0, 0
            position, total = self._queue.index(ticket) + 1, len(self._queue)
            self._changed.wait(0.5)
            return False, position, total

    def _leave(self, ticket: int, admitted: bool) -> None:
        with self._changed:
            if admitted:
                self._active -= 1
            elif ticket in self._queue:
                self._queue.remove(ticket)
            self._kinds.pop(ticket, None)
            self._changed.notify_all()


class _Ticket:
    """One request's place in line."""

    def __init__(self, admission: Admission, number: int, job_id: str, log):
        self.admission, self.number, self.job_id, self.log = admission, number, job_id, log
        self.admitted = False

    def wait(self) -> Iterator[str]:
        """Yield a "queued" message every half second until a slot is held."""
        started = time.monotonic()
        first_position = None
        while True:
            taken, position, total = self.admission._try_take(self.number)
            if taken:
                break
            first_position = first_position or position
            self.admission.requests.update(self.job_id, queue_position=position, progress=f"queued {position}/{total}")
            yield f"排队中 Queued: position {position} of {total}, waited {time.monotonic() - started:.0f} s"
        self.admitted = True
        waited = time.monotonic() - started
        metrics.QUEUE_WAIT.observe(waited)
        self.admission.requests.update(self.job_id, queue_position=None, queue_wait_s=round(waited, 2),
                                   started_at=time.time())
        if first_position:
            self.log.bind(figures={"queue_wait_s": round(waited, 2), "position": first_position}).info(
                f"waited {waited:.1f} s in queue (position {first_position})")
