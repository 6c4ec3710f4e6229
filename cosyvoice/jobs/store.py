"""The job database: SQLite on one host (default), PostgreSQL when several instances share the work.

Why a database and leases, not a task queue: a line is work that must be recorded exactly once in a
result the user downloads, and a worker may die mid-line. Here a claim is a row update in a
transaction (`SELECT … FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite serialises writers with
`BEGIN IMMEDIATE`), it carries a lease token and an expiry, and a result is accepted only by
`UPDATE … WHERE lease_token = <the claim's token>`. A dead worker's lease runs out and the line is
claimed again with a new token, so the late worker's result (if it ever arrives) is refused and its
file removed: nothing is lost, nothing is recorded twice. Times are wall-clock seconds; instances
sharing a database need synchronised clocks (NTP), within a fraction of the lease.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (Boolean, Column, Float, Index, Integer, MetaData, String, Table, Text, and_, create_engine,
                        event, func, or_, select, update)
from sqlalchemy.engine import Engine

from cosyvoice.errors import UserInputError
from cosyvoice.jobs.model import LineSpec

metadata = MetaData()

jobs = Table(
    "cv_jobs", metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False, default=""),
    Column("state", String(24), nullable=False),          # queued running paused cancelled done done_with_failures failed
    Column("source", String(16), nullable=False),         # the input format
    Column("options", Text, nullable=False, default="{}"),  # JSON: gap_ms …
    Column("total", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("finished_at", Float),
)

lines = Table(
    "cv_job_lines", metadata,
    Column("job_id", String(32), primary_key=True),
    Column("idx", Integer, primary_key=True),
    Column("custom_id", String(64), nullable=False),
    Column("text", Text, nullable=False),
    Column("voice", String(100)),
    Column("mode", String(32)),
    Column("instructions", Text, nullable=False, default=""),
    Column("seed", Integer),              # None: the service picks one, recorded in used_seed
    Column("speed", Float, nullable=False, default=1.0),
    Column("normalize", Boolean, nullable=False, default=True),
    Column("slot_start", Float),
    Column("slot_end", Float),
    Column("state", String(16), nullable=False),          # pending running done failed cancelled
    Column("attempts", Integer, nullable=False, default=0),
    Column("not_before", Float, nullable=False, default=0.0),
    Column("lease_owner", String(64)),
    Column("lease_token", String(32)),
    Column("lease_expires", Float),
    Column("audio_path", Text),           # relative to the jobs dir
    Column("sample_rate", Integer),
    Column("duration_s", Float),
    Column("used_seed", Integer),
    Column("fit_speed", Float),
    Column("misfit_s", Float),
    Column("error", Text, nullable=False, default=""),
    Column("voiced_by", String(64)),
    Column("revision", Integer, nullable=False, default=0),
    Column("started_at", Float),
    Column("finished_at", Float),
)
Index("cv_job_lines_claim", lines.c.state, lines.c.not_before)
Index("cv_job_lines_custom", lines.c.job_id, lines.c.custom_id, unique=True)

ACTIVE = ("queued", "running")
FINAL = ("cancelled", "done", "done_with_failures", "failed")


class JobNotFound(UserInputError):
    """No job (or line) by that id."""


class JobStateError(UserInputError):
    """The job cannot do that in its present state (e.g. resume a cancelled job)."""


@dataclass
class Claim:
    job_id: str
    idx: int
    token: str
    attempts: int
    line: dict


def open_engine(url: str) -> Engine:
    """An engine for a database URL: `sqlite:///path.db` or `postgresql+psycopg://…`."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn, _record):
            dbapi_conn.isolation_level = None        # transactions are begun below, as IMMEDIATE
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            conn.exec_driver_sql("BEGIN IMMEDIATE")   # take the write lock first: no upgrade deadlocks

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return create_engine(url, pool_pre_ping=True, pool_size=8, max_overflow=8)


def describe_url(url: str) -> str:
    """The URL without its password, for logs."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"
    return url


class JobStore:
    def __init__(self, url: str):
        self.url = url
        self.engine = open_engine(url)
        metadata.create_all(self.engine)
        self.is_postgres = self.engine.dialect.name == "postgresql"

    # ---- jobs -----------------------------------------------------------------------------
    def create(self, specs: list[LineSpec], source: str, name: str = "", options: dict | None = None) -> str:
        job_id = "job_" + uuid.uuid4().hex[:12]
        now = time.time()
        with self.engine.begin() as conn:
            conn.execute(jobs.insert().values(id=job_id, name=name[:200], state="queued", source=source,
                                              options=json.dumps(options or {}), total=len(specs),
                                              created_at=now, updated_at=now))
            conn.execute(lines.insert(), [{"job_id": job_id, "idx": i, **spec.fields(), "state": "pending",
                                           "attempts": 0, "not_before": 0.0, "error": "", "revision": 0}
                                          for i, spec in enumerate(specs)])
        return job_id

    def job(self, job_id: str) -> dict:
        with self.engine.connect() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).mappings().first()
        if row is None:
            raise JobNotFound(f"No job {job_id!r}. List jobs with GET /v1/jobs.")
        job = dict(row)
        job["options"] = json.loads(job["options"] or "{}")
        return job

    def lines(self, job_id: str) -> list[dict]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(lines).where(lines.c.job_id == job_id).order_by(lines.c.idx)).mappings()
            return [dict(row) for row in rows]

    def list_jobs(self, limit: int = 50) -> list[dict]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(jobs).order_by(jobs.c.created_at.desc()).limit(limit)).mappings()
            return [dict(row) for row in rows]

    def progress(self, job_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Per job: lines by state and when its first line started (one grouped query, for overviews)."""
        if not job_ids:
            return {}
        query = (select(lines.c.job_id, lines.c.state, func.count(), func.min(lines.c.started_at))
                 .where(lines.c.job_id.in_(job_ids)).group_by(lines.c.job_id, lines.c.state))
        out: dict[str, dict[str, Any]] = {job_id: {"first_start": None} for job_id in job_ids}
        with self.engine.connect() as conn:
            for job_id, state, count, first in conn.execute(query).tuples():
                entry = out[str(job_id)]
                entry[str(state)] = count
                if first is not None and (entry["first_start"] is None or first < entry["first_start"]):
                    entry["first_start"] = first
        return out

    def counts(self, job_id: str | None = None) -> dict[str, int]:
        query = select(lines.c.state, func.count()).group_by(lines.c.state)
        if job_id is not None:
            query = query.where(lines.c.job_id == job_id)
        with self.engine.connect() as conn:
            counts: dict[Any, Any] = dict(conn.execute(query).tuples().all())
            return {str(state): int(count) for state, count in counts.items()}

    def set_state(self, job_id: str, action: str) -> dict:
        """cancel, pause or resume; lines being voiced finish (their results are kept)."""
        allowed = {"cancel": ("queued", "running", "paused"), "pause": ("queued", "running"),
                   "resume": ("paused",)}[action]
        target = {"cancel": "cancelled", "pause": "paused", "resume": "queued"}[action]
        now = time.time()
        with self.engine.begin() as conn:
            row = conn.execute(select(jobs.c.state).where(jobs.c.id == job_id).with_for_update()).first()
            if row is None:
                raise JobNotFound(f"No job {job_id!r}. List jobs with GET /v1/jobs.")
            if row.state not in allowed:
                raise JobStateError(f"Job {job_id} is {row.state}; it cannot be {target} "
                                    f"(only a job that is {' or '.join(allowed)} can).")
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(state=target, updated_at=now,
                                                                         finished_at=now if action == "cancel" else None))
            if action == "cancel":
                conn.execute(update(lines).where(and_(lines.c.job_id == job_id, lines.c.state == "pending"))
                             .values(state="cancelled", finished_at=now))
            elif action == "resume":        # its last lines may have finished while it was paused
                self._maybe_finish(conn, job_id, now)
        return self.job(job_id)

    def regenerate(self, job_id: str, custom_id: str, text: str | None, seed: int | None) -> dict:
        """Voice one line again (new seed, or the text edited); the others stay as they are."""
        now = time.time()
        with self.engine.begin() as conn:
            job = conn.execute(select(jobs.c.state).where(jobs.c.id == job_id).with_for_update()).first()
            if job is None:
                raise JobNotFound(f"No job {job_id!r}.")
            if job.state == "cancelled":
                raise JobStateError(f"Job {job_id} was cancelled; lines of a cancelled job are not voiced again.")
            line = conn.execute(select(lines).where(and_(lines.c.job_id == job_id, lines.c.custom_id == custom_id))
                                ).mappings().first()
            if line is None:
                raise JobNotFound(f"Job {job_id} has no line {custom_id!r}.")
            if line["state"] in ("pending", "running"):
                raise JobStateError(f"Line {custom_id!r} is {line['state']}; regenerate it once it is voiced.")
            changes: dict[str, Any] = {"state": "pending", "attempts": 0, "not_before": 0.0, "error": "",
                                       "revision": line["revision"] + 1, "finished_at": None}
            changes["seed"] = seed if seed is not None else ((line["used_seed"] or 0) + 7919) % (2**31 - 1)
            if text is not None:
                changes["text"] = text
            conn.execute(update(lines).where(and_(lines.c.job_id == job_id, lines.c.idx == line["idx"]))
                         .values(**changes))
            if job.state in FINAL:
                conn.execute(update(jobs).where(jobs.c.id == job_id)
                             .values(state="queued", finished_at=None, updated_at=now))
        return self.job(job_id)

    # ---- leases ---------------------------------------------------------------------------
    def claim(self, owner: str, lease_s: float) -> Claim | None:
        """The next line to voice: pending and due, or running under an expired lease (its worker died)."""
        now = time.time()
        claimable = and_(jobs.c.state.in_(ACTIVE), or_(
            and_(lines.c.state == "pending", lines.c.not_before <= now),
            and_(lines.c.state == "running", lines.c.lease_expires < now)))
        query = (select(lines).join(jobs, jobs.c.id == lines.c.job_id).where(claimable)
                 .order_by(jobs.c.created_at, lines.c.idx).limit(1))
        if self.is_postgres:
            query = query.with_for_update(of=lines, skip_locked=True)
        token = uuid.uuid4().hex
        with self.engine.begin() as conn:
            row = conn.execute(query).mappings().first()
            if row is None:
                return None
            conn.execute(update(lines).where(and_(lines.c.job_id == row["job_id"], lines.c.idx == row["idx"]))
                         .values(state="running", lease_owner=owner, lease_token=token,
                                 lease_expires=now + lease_s, attempts=row["attempts"] + 1, started_at=now))
            conn.execute(update(jobs).where(and_(jobs.c.id == row["job_id"], jobs.c.state == "queued"))
                         .values(state="running", updated_at=now))
        return Claim(row["job_id"], row["idx"], token, row["attempts"] + 1, dict(row))

    def renew(self, owner: str, lease_s: float) -> int:
        """Extend every lease this worker holds (its heartbeat); a lease already taken over stays lost."""
        now = time.time()
        with self.engine.begin() as conn:
            return conn.execute(update(lines).where(and_(lines.c.lease_owner == owner, lines.c.state == "running",
                                                         lines.c.lease_expires >= now))
                                .values(lease_expires=now + lease_s)).rowcount

    def _held(self, claim: Claim):
        return and_(lines.c.job_id == claim.job_id, lines.c.idx == claim.idx, lines.c.state == "running",
                    lines.c.lease_token == claim.token)

    def complete(self, claim: Claim, owner: str, **result) -> tuple[bool, str | None]:
        """Record a voiced line; False when the lease was lost (the result must be thrown away).

        Returns (accepted, the file the line had before — a regenerated line's old take — to remove)."""
        now = time.time()
        with self.engine.begin() as conn:
            old = conn.execute(select(lines.c.audio_path).where(self._held(claim))).first()
            if old is None:
                return False, None
            conn.execute(update(lines).where(self._held(claim)).values(
                state="done", lease_owner=None, lease_token=None, lease_expires=None, error="", voiced_by=owner,
                finished_at=now, **result))
            self._maybe_finish(conn, claim.job_id, now)
        return True, old.audio_path

    def fail(self, claim: Claim, message: str, retry_in: float | None, count_attempt: bool = True) -> bool:
        """A line that failed: back to pending after `retry_in` seconds, or failed for good (None)."""
        now = time.time()
        values: dict[str, Any] = {"lease_owner": None, "lease_token": None, "lease_expires": None,
                                  "error": message[:1000]}
        if retry_in is None:
            values.update(state="failed", finished_at=now)
        else:
            values.update(state="pending", not_before=now + retry_in)
            if not count_attempt:
                values["attempts"] = claim.attempts - 1
        with self.engine.begin() as conn:
            changed = conn.execute(update(lines).where(self._held(claim)).values(**values)).rowcount
            if changed and retry_in is None:
                self._maybe_finish(conn, claim.job_id, now)
        return bool(changed)

    def _maybe_finish(self, conn, job_id: str, now: float) -> None:
        """The job's end state once no line is left to voice: done, done_with_failures or failed."""
        # The job row is locked first, so two workers finishing the last two lines cannot both miss it.
        conn.execute(select(jobs.c.id).where(jobs.c.id == job_id).with_for_update()).first()
        states = dict(conn.execute(select(lines.c.state, func.count()).where(lines.c.job_id == job_id)
                                   .group_by(lines.c.state)).all())
        if states.get("pending") or states.get("running"):
            return
        done, failed = states.get("done", 0), states.get("failed", 0)
        final = "failed" if failed and not done else "done_with_failures" if failed else "done"
        conn.execute(update(jobs).where(and_(jobs.c.id == job_id, jobs.c.state.in_(ACTIVE)))
                     .values(state=final, finished_at=now, updated_at=now))

    def size_bytes(self) -> int | None:
        """The database's size on disk (for the benchmark and the Backend tab)."""
        if self.is_postgres:
            with self.engine.connect() as conn:
                return int(conn.exec_driver_sql("SELECT pg_database_size(current_database())").scalar() or 0)
        path = Path(self.url.split("///", 1)[-1])
        return sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())
