"""OpenAI's Files and Batches calls over jobs, so `client.files.create(purpose="batch")`,
`client.batches.create/retrieve/cancel/list` and `client.files.content` of the official `openai`
package work unchanged.

    POST /v1/files                  multipart file + purpose=batch: the JSONL is kept as an input file
    GET  /v1/files/{id}[/content]   an input file, or a batch's output file (the job's manifest)
    POST /v1/batches                {input_file_id, endpoint: "/v1/audio/speech", completion_window}
    GET  /v1/batches[/{id}]         a batch is a job: its id is the job id
    POST /v1/batches/{id}/cancel

Differences from OpenAI: only `/v1/audio/speech` lines; the output file's bodies describe each line's
WAV (file name in the job's zip, duration, seed, start in the stitched track) instead of holding audio
bytes, which come from /v1/jobs/{id}/result; `completion_window` is accepted but not enforced.
"""
from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from loguru import logger
from starlette.concurrency import run_in_threadpool

from cosyvoice.server.openai_api import ApiError, authorizer, request_id
from cosyvoice.ops.atomic import atomic_file
from cosyvoice.jobs import model
from cosyvoice.jobs.store import JobNotFound

STATUS = {"queued": "in_progress", "running": "in_progress", "paused": "in_progress", "done": "completed",
          "done_with_failures": "completed", "failed": "completed", "cancelled": "cancelled"}
OUTPUT_PREFIX = "file-out-"


def _files_dir(runtime) -> Path:
    return Path(runtime.jobs_dir) / "files"


def _file_meta(runtime, file_id: str) -> dict:
    if not file_id.startswith("file-") or "/" in file_id or file_id.startswith(OUTPUT_PREFIX):
        raise JobNotFound(f"No file {file_id!r}.")
    path = _files_dir(runtime) / f"{file_id}.json"
    if not path.is_file():
        raise JobNotFound(f"No file {file_id!r}. Upload it with POST /v1/files (purpose=batch).")
    return json.loads(path.read_text(encoding="utf-8"))


def batch_object(runtime, job_id: str) -> dict:
    from cosyvoice.jobs.router import job_view

    view = job_view(runtime, job_id, with_lines=False)
    progress, options = view["progress"], view["options"]
    status = STATUS[view["state"]]
    return {"id": job_id, "object": "batch", "endpoint": "/v1/audio/speech", "errors": None,
            "input_file_id": options.get("input_file_id", ""), "completion_window": "24h", "status": status,
            "output_file_id": OUTPUT_PREFIX + job_id if status in ("completed", "cancelled") else None,
            "error_file_id": None, "created_at": int(view["created_at"]),
            "completed_at": int(view["finished_at"]) if status == "completed" else None,
            "cancelled_at": int(view["finished_at"]) if status == "cancelled" else None,
            "request_counts": {"total": progress["total"], "completed": progress["done"],
                               "failed": progress["failed"]},
            "metadata": options.get("metadata") or None}


def batches_router(runtime, gate) -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(authorizer(gate))])
    _file_routes(router, runtime)
    _batch_routes(router, runtime)
    return router


def _file_routes(router: APIRouter, runtime) -> None:
    """OpenAI's Files calls for batch input and output files."""
    from cosyvoice.jobs.router import _cues
    from cosyvoice.jobs import result

    @router.post("/files")
    async def upload(request: Request, rid: str = Depends(request_id)) -> Response:
        form = await request.form(max_part_size=model.MAX_INPUT_BYTES)
        upload, purpose = form.get("file"), form.get("purpose")
        if purpose != "batch":
            raise ApiError(400, f"Only purpose 'batch' files are kept here (got {str(purpose)[:20]!r}).",
                           param="purpose", code="invalid_value")
        if upload is None or isinstance(upload, str):
            raise ApiError(400, "Missing required parameter: 'file'.", param="file", code="missing_required_parameter")
        raw = await upload.read(model.MAX_INPUT_BYTES + 1)
        if len(raw) > model.MAX_INPUT_BYTES:
            raise ApiError(413, "The file is over the 20 MB limit.", code="request_too_large")
        file_id = "file-" + uuid.uuid4().hex[:24]
        meta = {"id": file_id, "object": "file", "bytes": len(raw), "created_at": int(time.time()),
                "filename": upload.filename or "batch.jsonl", "purpose": "batch", "status": "processed"}
        folder = _files_dir(runtime)
        with atomic_file(folder / f"{file_id}.jsonl") as handle:
            handle.write(raw)
        with atomic_file(folder / f"{file_id}.json", "w") as handle:
            json.dump(meta, handle)
        logger.bind(req=rid).info(f"batch input file {file_id} kept ({len(raw)} bytes)")
        return JSONResponse(meta)

    @router.get("/files/{file_id}")
    async def file_info(file_id: str) -> Response:
        return JSONResponse(await run_in_threadpool(_file_meta, runtime, file_id))

    @router.get("/files/{file_id}/content")
    async def file_content(file_id: str) -> Response:
        if file_id.startswith(OUTPUT_PREFIX):
            job_id = file_id[len(OUTPUT_PREFIX):]
            job = await run_in_threadpool(runtime.store.job, job_id)
            rows = await run_in_threadpool(runtime.store.lines, job_id)
            return Response(result.manifest_lines(job, rows, _cues(job, rows)), media_type="application/jsonl")
        await run_in_threadpool(_file_meta, runtime, file_id)
        return Response((_files_dir(runtime) / f"{file_id}.jsonl").read_bytes(), media_type="application/jsonl")


def _batch_routes(router: APIRouter, runtime) -> None:
    """OpenAI's Batches calls, each a view of one job."""
    @router.post("/batches")
    async def create(request: Request, rid: str = Depends(request_id)) -> Response:
        try:
            data = json.loads(await request.body() or b"null")
        except json.JSONDecodeError as err:
            raise ApiError(400, f"The body is not valid JSON ({err.msg}).", code="invalid_json") from None
        if not isinstance(data, dict) or not isinstance(data.get("input_file_id"), str):
            raise ApiError(400, "Missing required parameter: 'input_file_id'.", param="input_file_id",
                           code="missing_required_parameter")
        if data.get("endpoint") != "/v1/audio/speech":
            raise ApiError(400, "Only endpoint '/v1/audio/speech' is served in batches here.", param="endpoint",
                           code="invalid_value")
        file_id = data["input_file_id"]
        meta = await run_in_threadpool(_file_meta, runtime, file_id)
        try:
            text = (_files_dir(runtime) / f"{file_id}.jsonl").read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ApiError(400, f"File {file_id} is not UTF-8 JSONL.", "invalid_value", "input_file_id") from None
        specs = model.parse_input(text, "batch", {}, runtime.max_chars)
        metadata = data.get("metadata") if isinstance(data.get("metadata"), dict) else None
        job_id = await run_in_threadpool(runtime.store.create, specs, "batch", meta["filename"],
                                         {"gap_ms": 0, "input_file_id": file_id, "metadata": metadata})
        runtime.worker.wake()
        logger.bind(req=rid).info(f"batch {job_id} stored from {file_id}: {len(specs)} line(s)")
        return JSONResponse(await run_in_threadpool(batch_object, runtime, job_id))

    @router.get("/batches")
    async def list_batches(limit: int = 20) -> Response:
        rows = await run_in_threadpool(runtime.store.list_jobs, max(1, min(limit, 100)))
        data = [await run_in_threadpool(batch_object, runtime, row["id"]) for row in rows]
        return JSONResponse({"object": "list", "data": data, "has_more": False,
                             "first_id": data[0]["id"] if data else None,
                             "last_id": data[-1]["id"] if data else None})

    @router.get("/batches/{batch_id}")
    async def retrieve(batch_id: str) -> Response:
        return JSONResponse(await run_in_threadpool(batch_object, runtime, batch_id))

    @router.post("/batches/{batch_id}/cancel")
    async def cancel(batch_id: str, rid: str = Depends(request_id)) -> Response:
        await run_in_threadpool(runtime.store.set_state, batch_id, "cancel")
        logger.bind(req=rid).info(f"batch {batch_id}: cancel")
        return JSONResponse(await run_in_threadpool(batch_object, runtime, batch_id))
