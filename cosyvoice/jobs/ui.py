"""The 任务 Jobs tab: submit a file or pasted text as a job, watch its lines, play one, regenerate it,
pause/resume/cancel, download the zip. It reads and writes the same job store as /v1/jobs."""
from __future__ import annotations

from typing import Any

from pathlib import Path

import gradio as gr
import soundfile as sf

from cosyvoice.errors import StudioError
from cosyvoice.ui.voices import voice_choices
from cosyvoice.jobs import model, result
from cosyvoice.jobs.router import job_view

LINE_COLUMNS = ["#", "custom_id", "state", "seconds", "seed", "text", "message"]
FINAL = ("done", "done_with_failures", "failed", "cancelled")


def _submit(runtime, file, pasted: str, voice: str):
    try:
        if file:
            path = Path(file)
            text = path.read_text(encoding="utf-8-sig")
            fmt, name = model.guess_format(path.name, text), path.name
        elif pasted and pasted.strip():
            text, fmt, name = pasted, "txt", "pasted text"
        else:
            raise gr.Error("Upload a .txt/.csv/.srt/.jsonl file or paste some text first.")
        defaults = {"voice": voice} if voice else {}
        specs = model.parse_input(text, fmt, defaults, runtime.max_chars)
        job_id = runtime.store.create(specs, fmt, name, {"gap_ms": 0})
    except UnicodeDecodeError:
        raise gr.Error("The file is not UTF-8 text.") from None
    except StudioError as err:
        raise gr.Error(str(err)) from None
    runtime.worker.wake()
    return job_id, f"已提交 Submitted {job_id}: {len(specs)} line(s) from {name}."


def _view(runtime, job_id: str):
    if not job_id:
        return "", [], gr.update()
    try:
        view = job_view(runtime, job_id.strip())
    except StudioError as err:
        return f"⚠️ {err}", [], gr.update()
    p = view["progress"]
    eta = f" · ETA {view['eta_s']:.0f} s" if view["eta_s"] else ""
    misfit = f" · {len(view['misfits'])} line(s) longer than their slot" if view["misfits"] else ""
    summary = (f"**{view['id']}** · {view['state']} · {p['done']}/{p['total']} done, {p['failed']} failed"
               f"{eta}{misfit} · {view['audio_seconds']:.1f} s audio")
    rows = [[line["index"], line["custom_id"], line["state"], line["duration_s"], line["seed"], line["text"],
             line["error"] or ""] for line in view["lines"]]
    return summary, rows, gr.update(choices=[line["custom_id"] for line in view["lines"]])


def _play(runtime, job_id: str, custom_id: str):
    row = next((r for r in runtime.store.lines(job_id) if r["custom_id"] == custom_id), None) if job_id else None
    if row is None or row["state"] != "done":
        raise gr.Error("Pick a line that is done to play it.")
    samples, rate = sf.read(runtime.jobs_dir / row["audio_path"], dtype="int16")   # samples: no ffprobe needed
    return rate, samples


def _regenerate(runtime, job_id: str, custom_id: str):
    try:
        runtime.store.regenerate(job_id, custom_id, None, None)
    except StudioError as err:
        raise gr.Error(str(err)) from None
    runtime.worker.wake()
    return f"Line {custom_id} queued again with a new seed."


def _control(runtime, job_id: str, action: str):
    try:
        runtime.store.set_state(job_id, action)
    except StudioError as err:
        raise gr.Error(str(err)) from None
    runtime.worker.wake()
    return f"{job_id}: {action}"


def _download(runtime, job_id: str):
    try:
        job, rows = runtime.store.job(job_id), runtime.store.lines(job_id)
    except StudioError as err:
        raise gr.Error(str(err)) from None
    if any(r["state"] in ("pending", "running") for r in rows):
        raise gr.Error(f"Job {job_id} is still voicing lines; download it once it is done.")
    return str(result.write_zip(job, rows, runtime.jobs_dir, runtime.jobs_dir / "downloads" / f"{job_id}.zip"))


def jobs_tab(studio) -> None:
    runtime, service = studio.jobs, studio.service
    with gr.Tab("任务 Jobs"):
        gr.Markdown("长文本与批量任务：上传或粘贴，逐行查看、试听、重做、下载 · Long-form and batch jobs: upload "
                    "(.txt .csv .srt .jsonl) or paste, watch each line, play it, regenerate it, download the zip. "
                    "Jobs are stored in the job database and survive restarts.")
        with gr.Row():
            upload = gr.File(label="文件 File", file_types=[".txt", ".csv", ".srt", ".jsonl"], type="filepath")
            pasted = gr.Textbox(label="或粘贴文本 Or paste text (a line per paragraph)", lines=5,
                                elem_id="jobs-paste")
        with gr.Row():
            voice = gr.Dropdown([c for c in voice_choices(service) if c[1]], label="音色 Voice (saved)", elem_id="jobs-voice")
            submit = gr.Button("提交 Submit job", variant="primary", elem_id="jobs-submit")
        job_id = gr.Textbox(label="任务 Job id", elem_id="jobs-id")
        message = gr.Markdown(elem_id="jobs-message")
        summary = gr.Markdown(elem_id="jobs-summary")
        table = gr.Dataframe(headers=LINE_COLUMNS, value=[], interactive=False, wrap=True, elem_id="jobs-lines")
        with gr.Row():
            line = gr.Dropdown([], label="行 Line", elem_id="jobs-line", allow_custom_value=True)
            play = gr.Button("▶ 试听 Play", elem_id="jobs-play")
            redo = gr.Button("🔁 重做 Regenerate", elem_id="jobs-regenerate")
        player = gr.Audio(label="行音频 Line audio", interactive=False, elem_id="jobs-player")
        with gr.Row():
            pause = gr.Button("暂停 Pause", size="sm")
            resume = gr.Button("继续 Resume", size="sm")
            cancel = gr.Button("取消 Cancel", size="sm", variant="stop")
            download = gr.Button("下载 Download zip", elem_id="jobs-download")
        zip_file = gr.File(label="结果 Result", interactive=False, elem_id="jobs-zip")
    private: dict[str, Any] = dict(api_visibility="private")
    submit.click(lambda f, t, v: _submit(runtime, f, t, v), inputs=[upload, pasted, voice],
                 outputs=[job_id, message], **private)
    gr.Timer(1.5).tick(lambda j: _view(runtime, j), inputs=job_id, outputs=[summary, table, line],
                       queue=False, show_progress="hidden", **private)
    play.click(lambda j, c: _play(runtime, j, c), inputs=[job_id, line], outputs=player, **private)
    redo.click(lambda j, c: _regenerate(runtime, j, c), inputs=[job_id, line], outputs=message, **private)
    for button, action in ((pause, "pause"), (resume, "resume"), (cancel, "cancel")):
        button.click(lambda j, a=action: _control(runtime, j, a), inputs=job_id, outputs=message, **private)
    download.click(lambda j: _download(runtime, j), inputs=job_id, outputs=zip_file, **private)
    voice.focus(lambda: gr.update(choices=[c for c in voice_choices(service) if c[1]]), outputs=voice, queue=False, **private)
