"""What the 后台 Backend tab shows: recent requests, batch jobs, the log's tail, the process and the watchdog.

Plain functions over the job registry and the log files, so the tab only lays them out.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy.exc import SQLAlchemyError

JOB_COLUMNS = ["id", "mode", "state", "stage", "progress", "wait s", "time s", "audio s", "RTF", "error"]
# Short columns narrow, progress and error wide, so headers stay on one line and errors are readable.
JOB_COLUMN_WIDTHS = ["7%", "8%", "11%", "7%", "16%", "6%", "6%", "6%", "5%", "28%"]
BATCH_COLUMNS = ["job", "name", "state", "progress", "lines done", "failed", "ETA s"]
BATCH_JOBS_SHOWN = 20
LEVELS = ("ALL", "INFO", "SUCCESS", "WARNING", "ERROR")
TAIL_BYTES = 512 * 1024
RESTART_WORDS = re.compile(r"restart|exited|crash loop|not answering|monitor (started|stopping)")


def job_rows(jobs: list[dict], request_id: str = "") -> list[list]:
    """Table rows, newest first; with a request id (or part of one) only the matching jobs."""
    wanted = (request_id or "").strip()
    return [[j["id"], j["mode"], j["state"], j["stage"], j["progress"], j["queue_wait_s"], j["elapsed_s"],
             j["audio_s"], j["rtf"], j["error"]] for j in jobs if wanted in j["id"]]


def batch_job_rows(runtime: Any, limit: int = BATCH_JOBS_SHOWN) -> list[list]:
    """The newest batch jobs (cosyvoice.jobs) from the job store, newest first; [] when jobs are off.

    One grouped query for all of them, so the 1.5 s refresh stays cheap on a long job. A store that
    cannot be read (a database server down) gives one row saying so instead of an error every tick.
    """
    store = getattr(runtime, "store", None)
    if store is None:
        return []
    try:
        jobs = store.list_jobs(limit)
        progress = store.progress([job["id"] for job in jobs])
    except SQLAlchemyError as err:
        return [["-", f"job database unreachable: {str(err).splitlines()[0][:120]}", "error", "", "", "", ""]]
    return [_batch_row(job, progress.get(job["id"], {})) for job in jobs]


def _batch_row(job: dict, counts: dict[str, Any]) -> list:
    done, failed, cancelled = (int(counts.get(state, 0)) for state in ("done", "failed", "cancelled"))
    left = int(counts.get("pending", 0)) + int(counts.get("running", 0))
    total = max(int(job["total"]), 1)
    finished = done + failed + cancelled
    eta: float | str = ""
    first_start = counts.get("first_start")
    if done and first_start and job["state"] in ("queued", "running"):
        rate = done / max(time.time() - float(first_start), 1e-3)
        eta = round(left / rate, 1)
    return [job["id"], job["name"], job["state"], f"{finished}/{job['total']} ({100 * finished / total:.0f} %)",
            done, failed, eta]


def _tail_lines(path: Path, max_bytes: int = TAIL_BYTES) -> list[str]:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except OSError:
        return []
    lines = data.decode("utf-8", errors="replace").splitlines()
    return lines[1:] if size > max_bytes else lines      # the first may be cut in half


def log_tail(log_dir: Path, level: str = "ALL", request_id: str = "", limit: int = 200) -> str:
    lines = _tail_lines(Path(log_dir) / "runtime.log")
    if level and level != "ALL":
        lines = [line for line in lines if f"| {level:<7} |" in line]
    request_id = (request_id or "").strip()
    if request_id:
        lines = [line for line in lines if f"req={request_id}" in line]
    # Newest first: the box is rewritten every refresh and a textarea cannot be told to stay scrolled to
    # its end, so the newest line is where the reader's eye already is.
    return "\n".join(reversed(lines[-limit:])) or "(no matching lines)"


def recent_restarts(log_dir: Path, limit: int = 10) -> str:
    lines = [line for line in _tail_lines(Path(log_dir) / "monitor.log") if RESTART_WORDS.search(line)]
    return "\n".join(lines[-limit:]) or "(no restarts recorded: the app may run without ./monitor.sh)"


# One Process object for the app's life: cpu_percent() measures since its previous call on the same
# object, so a fresh object each refresh always said 0 %.
_PROCESS = psutil.Process()
_PROCESS.cpu_percent(interval=None)


def process_facts(engine, started: float) -> str:
    process = _PROCESS
    info = engine.version_info()
    rows = [("engine", engine.name), ("model", engine.model_label), ("device", engine.device),
            ("precision", info.get("precision", "fp32")), ("model identity", _identity(info)),
            ("RSS", f"{process.memory_info().rss / 2**20:.0f} MB"),
            ("CPU", f"{process.cpu_percent(interval=None):.0f} % (100 % = one core)"),
            ("uptime", f"{(time.time() - started) / 60:.1f} min")]
    rows += _gpu_rows()
    return "\n".join(f"| {name} | {value} |" for name, value in [("**什么 What**", "**值 Value**"), ("---", "---")]
                     + rows)


def _identity(info: dict) -> str:
    identity = info.get("identity")
    if isinstance(identity, dict):
        return ", ".join(f"{k} {str(v)[:12]}" for k, v in list(identity.items())[:3])
    return str(identity or info.get("synthesiser", "-"))


def _gpu_rows() -> list[tuple[str, str]]:
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return [("GPU", "none (CPU)")]
    return [("GPU memory allocated", f"{torch.cuda.memory_allocated() / 2**20:.0f} MB"),
            ("GPU memory reserved", f"{torch.cuda.memory_reserved() / 2**20:.0f} MB")]
