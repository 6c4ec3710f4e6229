"""The WebUI page: the header and status line, then the tabs (Synthesize, Dialogue, Jobs, History,
Backend), and Gradio's queue set so the service's Admission is the one that says "busy".
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import gradio as gr

from cosyvoice.ui import backend

from cosyvoice.ui import voices as ui_voices
from cosyvoice.jobs.ui import jobs_tab
from cosyvoice.ui.synthesize import synthesize_tab

if TYPE_CHECKING:
    from cosyvoice.server.app import Studio


def build_ui(studio: "Studio") -> gr.Blocks:
    # delete_cache: uploads and Gradio's copies older than an hour are swept every 10 minutes.
    with gr.Blocks(title="CosyVoice Studio", delete_cache=(600, 3600)) as demo:
        gr.Markdown("# CosyVoice Studio · 零样本语音克隆 Zero-shot voice cloning")
        status = gr.Markdown(studio.status_line())
        form = synthesize_tab(studio)
        ui_voices.dialogue_tab(studio.service)
        jobs_tab(studio)                                  # 任务 Jobs (cosyvoice/jobs/ui.py)
        ui_voices.history_tab(studio.service, form)
        backend_tab(studio)
        gr.Timer(1.0).tick(studio.status_line, outputs=status, queue=False, show_progress="hidden",
                           api_visibility="private")
    # The service's Admission is the one queue: Gradio's never refuses (no size bound) and runs more
    # handlers at once than Admission admits and lets wait, so "busy" always comes from the service.
    admission = studio.service.stats()
    demo.queue(max_size=None, default_concurrency_limit=admission["workers"] + admission["queue_size"] + 32)
    return demo


def backend_tab(studio: "Studio") -> None:
    """The read-only Backend tab: recent requests, batch jobs, the log tail, the process, restarts."""
    with gr.Tab("后台 Backend"):
        gr.Markdown("最近 50 个请求、运行日志与进程状态（只读，每 1.5 秒刷新） · The last 50 requests, the "
                    "runtime log and the process, read-only, refreshed every 1.5 s.")
        jobs_table = gr.Dataframe(headers=backend.JOB_COLUMNS, value=[], interactive=False, wrap=True,
                                  column_widths=list[str | int](backend.JOB_COLUMN_WIDTHS), label="请求 Requests",
                                  elem_id="jobs-table")
        batch_table = gr.Dataframe(headers=backend.BATCH_COLUMNS, value=[], interactive=False, wrap=True,
                                   label="批量任务 Batch jobs (/v1/jobs)", elem_id="batch-jobs-table")
        with gr.Row():
            level = gr.Dropdown(list(backend.LEVELS), value="ALL", label="级别 Level", scale=1)
            request_filter = gr.Textbox(label="请求 Request id (filters the jobs and the log)",
                                        placeholder="e.g. 7f3a01", scale=2)
        log_box = gr.Textbox(label="运行日志 runtime.log (last 200 lines, newest first)", lines=16, max_lines=16,
                             interactive=False, autoscroll=True, elem_id="log-tail")
        with gr.Row():
            facts = gr.Markdown(elem_id="process-facts")
            restarts = gr.Textbox(label="重启 Restarts (monitor.log)", lines=6, interactive=False)
        gr.Timer(1.5).tick(studio.backend_view, inputs=[level, request_filter],
                           outputs=[jobs_table, log_box, facts, restarts, batch_table], queue=False, show_progress="hidden",
                           api_visibility="private")

