"""The jobs HTTP API (/v1/jobs) and `mount_jobs`, which the server calls once (flags: settings.JobsConfig).

    POST /v1/jobs                                JSON {lines:[…], voice, …} or multipart file= (.txt .csv .srt .jsonl)
    GET  /v1/jobs                                recent jobs
    GET  /v1/jobs/{id}                           state, progress, ETA, per-line state (?lines=false: without)
    POST /v1/jobs/{id}/cancel|pause|resume
    POST /v1/jobs/{id}/lines/{custom_id}/regenerate   {seed?, text?}
    GET  /v1/jobs/{id}/lines/{custom_id}/audio   one line's WAV
    GET  /v1/jobs/{id}/result?format=wav|srt|vtt|jsonl|zip

Errors use the /v1 API's OpenAI shape and carry the request id, from its one exception handler (the
job errors' status and code are in openai_api.ERRORS); auth is the /v1 API's dependency (Bearer key, or
the login's HTTP Basic credentials).
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from loguru import logger
from sqlalchemy.exc import SQLAlchemyError
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from cosyvoice.errors import StudioError, UserInputError
from cosyvoice.settings import JobsConfig
from cosyvoice.server.http_guard import CredentialGate
from cosyvoice.server.openai_api import ApiError, authorizer, request_id, use_error_shape
from cosyvoice.jobs import model, result
from cosyvoice.jobs.store import JobNotFound, JobStateError, JobStore, describe_url
from cosyvoice.jobs.worker import JobWorker, WorkerConfig
from cosyvoice.jobs.openai_batches import batches_router

RESULT_FORMATS = {"wav": "audio/wav", "srt": "application/x-subrip", "vtt": "text/vtt",
                  "jsonl": "application/jsonl", "zip": "application/zip"}


@dataclass
class JobsRuntime:
    store: JobStore
    worker: JobWorker
    jobs_dir: Path
    max_chars: int


def runtime_from_config(service, config: JobsConfig) -> JobsRuntime:
    jobs_dir = Path(config.jobs_dir or Path(service.config.outputs_dir) / "jobs").resolve()
    url = config.jobs_db or f"sqlite:///{jobs_dir / 'jobs.db'}"
    try:
        store = JobStore(url)
    except (SQLAlchemyError, OSError) as err:
        raise StudioError(f"cannot open the job database {describe_url(url)}: {str(err).splitlines()[0][:200]}. "
                          f"Check --jobs-db (and that the database server is up).") from err
    workers = config.job_workers if config.job_workers is not None else max(1, service.admission.width - 1)
    worker = JobWorker(store, service, WorkerConfig(jobs_dir=jobs_dir, workers=workers,
                                                    lease_s=config.job_lease_seconds))
    logger.bind(req="jobs").info(f"jobs in {describe_url(url)}, files in {jobs_dir}")
    return JobsRuntime(store, worker, jobs_dir, service.config.max_text_chars)


def mount_jobs(app: FastAPI, service, config: JobsConfig, gate: CredentialGate | None = None) -> JobsRuntime:
    """The app's one hook: open the database, start this instance's workers, add the routes (and the
    /v1 error handler they rely on, should they be mounted without the rest of /v1)."""
    runtime = runtime_from_config(service, config)
    gate = gate or CredentialGate()
    use_error_shape(app)
    app.include_router(jobs_router(runtime, gate))
    app.include_router(batches_router(runtime, gate))
    runtime.worker.start()
    return runtime


# ---- views ---------------------------------------------------------------------------------
def line_view(job_id: str, row: dict) -> dict:
    view = {"custom_id": row["custom_id"], "index": row["idx"] + 1, "text": row["text"], "state": row["state"],
            "attempts": row["attempts"], "voice": row["voice"], "seed": row["used_seed"],
            "duration_s": None if row["duration_s"] is None else round(row["duration_s"], 3),
            "error": row["error"] or None, "revision": row["revision"], "voiced_by": row["voiced_by"],
            "finished_at": row["finished_at"]}
    if row["slot_start"] is not None:
        view.update(slot=[row["slot_start"], row["slot_end"]], fit_speed=row["fit_speed"],
                    misfit_s=None if row["misfit_s"] is None else round(row["misfit_s"], 3))
    if row["state"] == "done":
        view["audio_url"] = f"/v1/jobs/{job_id}/lines/{row['custom_id']}/audio"
    return view


def job_view(runtime: JobsRuntime, job_id: str, with_lines: bool = True) -> dict:
    job = runtime.store.job(job_id)
    rows = runtime.store.lines(job_id)
    counts = {state: 0 for state in ("pending", "running", "done", "failed", "cancelled")}
    for row in rows:
        counts[row["state"]] += 1
    finished = counts["done"] + counts["failed"] + counts["cancelled"]
    started = [row["started_at"] for row in rows if row["started_at"]]
    eta = None
    if counts["done"] and started and job["state"] in ("queued", "running"):
        rate = counts["done"] / max(time.time() - min(started), 1e-3)
        eta = round((counts["pending"] + counts["running"]) / rate, 1)
    view = {"id": job["id"], "object": "job", "name": job["name"], "state": job["state"], "source": job["source"],
            "created_at": job["created_at"], "finished_at": job["finished_at"], "options": job["options"],
            "progress": {"total": job["total"], **counts, "fraction": round(finished / max(job["total"], 1), 4)},
            "eta_s": eta, "audio_seconds": round(sum(r["duration_s"] or 0 for r in rows if r["state"] == "done"), 3),
            "misfits": [line_view(job_id, r) for r in rows if (r["misfit_s"] or 0) > 0.02],
            "result_urls": {fmt: f"/v1/jobs/{job_id}/result?format={fmt}" for fmt in RESULT_FORMATS}}
    if with_lines:
        view["lines"] = [line_view(job_id, row) for row in rows]
    return view


# ---- submission ----------------------------------------------------------------------------
JOB_DEFAULTS = ("voice", "mode", "instructions", "seed", "speed", "normalize")


def _defaults(data: dict) -> dict:
    return {key: data[key] for key in JOB_DEFAULTS if data.get(key) not in (None, "")}


def _options(data: dict) -> dict:
    try:
        gap = float(data.get("gap_ms") or 0)
    except (TypeError, ValueError):
        raise UserInputError("gap_ms must be a number of milliseconds.") from None
    if not 0 <= gap <= 10_000:
        raise UserInputError(f"gap_ms {gap:g} is out of range; choose 0–10000 ms.")
    return {"gap_ms": gap}


def specs_from_json(data: dict, max_chars: int) -> tuple[list[model.LineSpec], str]:
    if not isinstance(data, dict):
        raise UserInputError("The body must be a JSON object with 'lines' (or 'input' and 'format').")
    defaults = _defaults(data)
    if "lines" in data:
        if not isinstance(data["lines"], list):
            raise UserInputError("'lines' must be a list of texts or objects.")
        specs = [model.line_from_object(obj, n, defaults, max_chars) for n, obj in enumerate(data["lines"], 1)]
        return model.check_lines(specs), "json"
    if isinstance(data.get("input"), str):
        fmt = str(data.get("format") or "txt")
        return model.parse_input(data["input"], fmt, defaults, max_chars), fmt
    raise UserInputError("Give the job's 'lines' (a list), or 'input' text with its 'format' (txt, csv, srt, jsonl, batch).")


async def _submission(request: Request, max_chars: int) -> tuple[list[model.LineSpec], str, dict]:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_part_size=model.MAX_INPUT_BYTES)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise UserInputError("The form needs the job's file in a field named 'file'.")
        raw = await upload.read(model.MAX_INPUT_BYTES + 1)
        if len(raw) > model.MAX_INPUT_BYTES:
            raise ApiError(413, f"The file is over the {model.MAX_INPUT_BYTES // 2**20} MB limit.",
                           code="request_too_large")
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise UserInputError("The file is not UTF-8 text.") from None
        fields = {key: value for key, value in form.items() if isinstance(value, str)}
        fmt = fields.get("format") or model.guess_format(upload.filename or "", text)
        specs = model.parse_input(text, fmt, _defaults(fields), max_chars)
        return specs, fmt, {**_options(fields), "name": fields.get("name") or upload.filename or ""}
    body = await request.body()
    if len(body) > model.MAX_INPUT_BYTES:
        raise ApiError(413, f"The body is over the {model.MAX_INPUT_BYTES // 2**20} MB limit.", code="request_too_large")
    try:
        data = json.loads(body or b"null")
    except json.JSONDecodeError as err:
        raise ApiError(400, f"The body is not valid JSON ({err.msg}).", code="invalid_json") from None
    specs, fmt = specs_from_json(data, max_chars)
    return specs, fmt, {**_options(data), "name": str(data.get("name") or "")}


def jobs_router(runtime: JobsRuntime, gate: CredentialGate) -> APIRouter:
    router = APIRouter(prefix="/v1/jobs", dependencies=[Depends(authorizer(gate))])
    _job_routes(router, runtime)
    _line_routes(router, runtime)
    return router


def _job_routes(router: APIRouter, runtime: JobsRuntime) -> None:
    """Submit, list and show jobs; cancel, pause and resume them."""
    store = runtime.store

    @router.post("")
    async def submit(request: Request, rid: str = Depends(request_id)) -> Response:
        specs, fmt, options = await _submission(request, runtime.max_chars)
        name = options.pop("name", "")
        job_id = await run_in_threadpool(store.create, specs, fmt, name, options)
        runtime.worker.wake()
        logger.bind(req=rid).info(f"job {job_id} stored: {len(specs)} line(s) from {fmt} input")
        view = await run_in_threadpool(job_view, runtime, job_id, False)
        return JSONResponse(view, status_code=201)

    @router.get("")
    async def list_jobs(limit: int = 50) -> Response:
        rows = await run_in_threadpool(store.list_jobs, max(1, min(limit, 500)))
        return JSONResponse({"object": "list", "data": [
            {"id": r["id"], "name": r["name"], "state": r["state"], "total": r["total"],
             "created_at": r["created_at"], "finished_at": r["finished_at"]} for r in rows]})

    @router.get("/{job_id}")
    async def show(job_id: str, lines: bool = True) -> Response:
        return JSONResponse(await run_in_threadpool(job_view, runtime, job_id, lines))

    for action in ("cancel", "pause", "resume"):
        router.add_api_route(f"/{{job_id}}/{action}", _action_route(action, runtime), methods=["POST"])


def _line_routes(router: APIRouter, runtime: JobsRuntime) -> None:
    """Regenerate one line, fetch one line's audio, fetch the job's result."""
    store = runtime.store

    @router.post("/{job_id}/lines/{custom_id}/regenerate")
    async def regenerate(request: Request, job_id: str, custom_id: str, rid: str = Depends(request_id)) -> Response:
        body = await request.body()
        try:
            data = json.loads(body) if body.strip() else {}
        except json.JSONDecodeError as err:
            raise ApiError(400, f"The body is not valid JSON ({err.msg}).", code="invalid_json") from None
        text, seed = data.get("text"), data.get("seed")
        if text is not None:
            text = model.line_from_object({"text": text}, 1, {}, runtime.max_chars).text
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise UserInputError("seed must be a whole number, 0 or more.")
        await run_in_threadpool(store.regenerate, job_id, custom_id, text, seed)
        runtime.worker.wake()
        logger.bind(req=rid).info(f"job {job_id} line {custom_id!r}: regenerate ({'new text' if text else 'new seed'})")
        return JSONResponse(await run_in_threadpool(job_view, runtime, job_id, True))

    @router.get("/{job_id}/lines/{custom_id}/audio")
    async def line_audio(job_id: str, custom_id: str) -> Response:
        rows = await run_in_threadpool(store.lines, job_id)
        row = next((r for r in rows if r["custom_id"] == custom_id), None)
        if row is None:
            await run_in_threadpool(store.job, job_id)         # 404 for the job first
            raise JobNotFound(f"Job {job_id} has no line {custom_id!r}.")
        if row["state"] != "done":
            raise JobStateError(f"Line {custom_id!r} is {row['state']}; it has no audio yet.")
        return FileResponse(runtime.jobs_dir / row["audio_path"], media_type="audio/wav",
                            filename=Path(result.line_file_name(row)).name)

    @router.get("/{job_id}/result")
    async def job_result(job_id: str, format: str = "zip", partial: bool = False) -> Response:
        if format not in RESULT_FORMATS:
            raise ApiError(400, f"Unknown result format {format[:10]!r}; use one of {', '.join(RESULT_FORMATS)}.",
                           param="format", code="invalid_value")
        job = await run_in_threadpool(store.job, job_id)
        rows = await run_in_threadpool(store.lines, job_id)
        left = sum(1 for r in rows if r["state"] in ("pending", "running"))
        if left and not partial:
            raise JobStateError(f"Job {job_id} is {job['state']} with {left} line(s) still to voice; wait for it "
                                f"(GET /v1/jobs/{job_id}) or ask for what is ready with partial=true.")
        return await run_in_threadpool(_result_response, runtime, job, rows, format)


def _action_route(action: str, runtime: JobsRuntime):
    async def route(job_id: str, rid: str = Depends(request_id)) -> Response:
        await run_in_threadpool(runtime.store.set_state, job_id, action)
        runtime.worker.wake()
        logger.bind(req=rid).info(f"job {job_id}: {action}")
        return JSONResponse(await run_in_threadpool(job_view, runtime, job_id, False))
    route.__name__ = f"job_{action}"
    return route


def _result_response(runtime: JobsRuntime, job: dict, rows: list[dict], fmt: str) -> Response:
    stem = f"{job['id']}"
    if fmt == "zip":
        handle = tempfile.NamedTemporaryFile(prefix=f".{stem}.", suffix=".zip", dir=runtime.jobs_dir, delete=False)
        handle.close()
        path = result.write_zip(job, rows, runtime.jobs_dir, Path(handle.name))
        return FileResponse(path, media_type=RESULT_FORMATS["zip"], filename=f"{stem}.zip",
                            background=BackgroundTask(path.unlink, missing_ok=True))
    if fmt == "jsonl":
        return Response(result.manifest_lines(job, rows, _cues(job, rows)), media_type=RESULT_FORMATS[fmt])
    samples, rate, cues = result.stitch(job, rows, runtime.jobs_dir)
    if fmt == "wav":
        if not rate:
            raise JobStateError(f"Job {job['id']} has no voiced line, so there is no audio to stitch.")
        return Response(result.wav_bytes(samples, rate), media_type="audio/wav",
                        headers={"content-disposition": f'attachment; filename="{stem}.wav"'})
    text = result.srt_text(cues) if fmt == "srt" else result.vtt_text(cues)
    return Response(text, media_type=f"{RESULT_FORMATS[fmt]}; charset=utf-8",
                    headers={"content-disposition": f'attachment; filename="{stem}.{fmt}"'})


def _cues(job: dict, rows: list[dict]) -> list[result.Cue]:
    """Cue times from the recorded durations alone (no audio read): what the manifest needs."""
    return [result.Cue(n, row["custom_id"], start, start + row["duration_s"], row["text"])
            for n, (row, start) in enumerate(result.timeline(job, rows), 1)]
