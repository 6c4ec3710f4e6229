"""CosyVoice Studio WebUI: Gradio Blocks on port 7860 with /health and /version.

app.py is thin: it parses flags, builds the engine and the service, lays out the UI and mounts
the HTTP endpoints. Every request goes through cosyvoice.service.SynthesisService.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import gradio as gr
import uvicorn
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from loguru import logger

from cosyvoice import __version__, backend, ui_voices
from cosyvoice.audio import MAX_FILE_BYTES, PROMPT_SUFFIXES, recording_as_wav
from cosyvoice.batch.router import add_job_args, mount_jobs
from cosyvoice.batch.ui import jobs_tab
from cosyvoice.engines.registry import add_engine_args, engine_from_args
from cosyvoice.errors import StudioError
from cosyvoice.http_guard import (CredentialGate, GuardConfig, HttpGuard, OriginPolicy, normalize_origins,
                                  request_id_of)
from cosyvoice.instruct import PRESETS
from cosyvoice.instance import InstanceMiddleware, instance_info
from cosyvoice.log import masked_argv, set_stage_lookup, setup_logging
from cosyvoice.metrics import REGISTRY, set_build_info, watch_gpu_memory
from cosyvoice.modes import BY_ID as MODES_BY_ID, MODES
from cosyvoice import openai_api
from cosyvoice.service import MAX_SEED, ServiceConfig, SynthesisRequest, SynthesisService, add_service_args
from cosyvoice.text.frontend import TextFrontend
from cosyvoice.text.help import SYNTAX_HELP
from cosyvoice.tracing import setup_tracing
from cosyvoice.upload_budget import UploadBudget
from cosyvoice.ui_runs import PLAYER_HEAD, PageRun, PageRuns, player_slices
from cosyvoice.ui_studio import PRESET_INFO, preset_choices, seed_problem, spoken_length
from cosyvoice.voices import check_voices_dir

ROOT = Path(__file__).resolve().parent
WARMUP_TEXT = "你好。"
WARMUP_PROMPT_TEXT = "你好，欢迎使用语音合成工作室。今天天气很好。"


def synthetic_prompt():
    """A spoken prompt made on the spot (espeak-ng), so the warm-up needs no recording on disk."""
    from cosyvoice.audio import prompt_from_samples
    from cosyvoice.engines.lite import espeak

    spoken = espeak.speak(WARMUP_PROMPT_TEXT, espeak.EspeakParams(voice="cmn"))
    return prompt_from_samples(spoken.samples, spoken.sample_rate)


class StartupError(Exception):
    """A flag or the environment makes starting impossible; the message says what to change."""


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """`user:password` → (user, password); anything else is refused rather than silently ignored."""
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user.strip() or not password:
        raise StartupError("--auth (or COSYVOICE_AUTH, --auth-file) must look like user:password, with both parts "
                           "non-empty; "
                           "the login stays off until it does, so the app will not start without it.")
    return user.strip(), password


def read_secret(args: argparse.Namespace, name: str, env: str, environ) -> tuple[str | None, list[str]]:
    """The --auth / --api-key value from its flag, its file or the environment, and warnings about how it
    was given. Giving both the flag and the file is refused: which one wins would be a guess."""
    flag, value, path = "--" + name.replace("_", "-"), getattr(args, name), getattr(args, f"{name}_file")
    if value and path:
        raise StartupError(f"{flag} and {flag}-file are both given; keep one (the file is the safer).")
    if path is not None:
        try:
            value = path.read_text(encoding="utf-8").splitlines()[0].strip() if path.stat().st_size else ""
            mode = path.stat().st_mode
        except (OSError, UnicodeDecodeError) as err:
            raise StartupError(f"{flag}-file {path} cannot be read ({getattr(err, 'strerror', None) or err}).") from None
        if not value:
            raise StartupError(f"{flag}-file {path} is empty; put the secret on its first line.")
        warnings = [f"{flag}-file {path} can be read by other users of this machine; chmod 600 it."] \
            if mode & 0o077 else []
        return value, warnings
    if value:
        return value, [f"{flag} on the command line can be read by every user of this machine (ps, /proc) and "
                       f"stays in shell history; prefer {env} in the environment or {flag}-file."]
    return environ.get(env) or None, []


def read_secrets(args: argparse.Namespace, environ) -> list[str]:
    """Fill args.auth and args.api_key from their flags, files or environment; the warnings to log."""
    args.auth, auth_warnings = read_secret(args, "auth", "COSYVOICE_AUTH", environ)
    args.api_key, key_warnings = read_secret(args, "api_key", "COSYVOICE_API_KEY", environ)
    return auth_warnings + key_warnings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="CosyVoice Studio WebUI")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (run.sh uses 0.0.0.0)")
    parser.add_argument("--port", type=int, default=7860)
    add_engine_args(parser)
    add_service_args(parser, ROOT)
    parser.add_argument("--log-dir", type=Path, default=ROOT / "logs")
    parser.add_argument("--log-format", choices=("text", "json"), default="text",
                        help="json: also one JSON object per line in <log dir>/runtime.jsonl")
    parser.add_argument("--auth", default=None,
                        help="user:password to require a login. Safer: env COSYVOICE_AUTH or --auth-file, which "
                             "other users of the machine cannot read from the process list")
    parser.add_argument("--auth-file", type=Path, default=None,
                        help="a file holding user:password (first line; chmod 600)")
    parser.add_argument("--public-metrics", action="store_true",
                        help="with --auth, still serve /metrics and /version without a login (for scrapers)")
    parser.add_argument("--grace-seconds", type=float, default=30.0,
                        help="on SIGTERM, how long running requests may take to finish")
    parser.add_argument("--max-upload-mb", type=float, default=MAX_FILE_BYTES / 2**20,
                        help="largest upload accepted (refused before it is stored)")
    parser.add_argument("--uploads-per-minute", type=int, default=60,
                        help="uploads one client may make to the upload cache per minute (then 429)")
    parser.add_argument("--upload-mb-per-minute", type=float, default=128.0,
                        help="megabytes one client may upload to the upload cache per minute (then 429)")
    parser.add_argument("--upload-cache-mb", type=float, default=2048.0,
                        help="total size of the upload cache (uploads are kept up to an hour; then 507)")
    parser.add_argument("--api-key", default=None,
                        help="require 'Authorization: Bearer KEY' on the /v1 API. Safer: env COSYVOICE_API_KEY "
                             "or --api-key-file")
    parser.add_argument("--api-key-file", type=Path, default=None,
                        help="a file holding the API key (first line; chmod 600)")
    parser.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                        help="a web page origin (https://host[:port]) allowed to call this server from a browser "
                             "(CORS); repeat for several. Other sites' pages are refused (403)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="Gradio's upload/cache folder (default .run/gradio-<port>); swept hourly")
    add_job_args(parser)
    return parser.parse_args(argv)


def git_commit() -> tuple[str | None, str | None]:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%H %cI"], capture_output=True,
                             text=True, timeout=5)
        if out.returncode == 0 and out.stdout.strip():
            commit, when = out.stdout.split()
            return commit, when
    except (OSError, subprocess.SubprocessError):
        pass
    return None, None


class Studio:
    """Everything the UI and the endpoints share: the engine, the service and start-up facts."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.engine = engine_from_args(args)
        self.service = SynthesisService(self.engine, ServiceConfig.from_args(args), TextFrontend(args.g2p_dict))
        self.commit, self.commit_time = git_commit()
        self.started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.instance = instance_info(args.port)
        set_build_info(__version__, self.commit, self.engine.name, self.engine.model_label, self.instance.name)
        self.warmed_up = threading.Event()
        self.warmup_problem: str | None = None
        self.page_runs = PageRuns()

    def health(self) -> dict:
        stats = self.service.stats()
        return {"status": "ok", "engine": self.engine.name,
                "uptime_s": round(time.time() - self.service.started, 1),
                "queue_depth": stats["queue_depth"], "busy_workers": stats["busy_workers"],
                "workers": stats["workers"]}

    def readiness(self) -> tuple[bool, str]:
        """Ready = model loaded, one warm-up synthesis done, results can be saved, not shutting down."""
        if self.service.stats()["draining"]:
            return False, "shutting down"
        if not self.warmed_up.is_set():
            return False, self.warmup_problem or "warming up: the first synthesis has not finished yet"
        problem = self.service.outputs_problem()
        if problem:
            return False, problem
        return True, "ready"

    def warm_up(self) -> None:
        """One short synthesis before /ready says yes, so the first user does not pay for lazy set-up."""
        log = logger.bind(req="warmup")
        # Test-only: hold the warm-up back so a test can watch /ready say 503 first.
        time.sleep(float(os.environ.get("COSYVOICE_TEST_WARMUP_DELAY_S", "0")))
        try:
            started = time.perf_counter()
            seconds = self.service.warm_up(WARMUP_TEXT, synthetic_prompt(), WARMUP_PROMPT_TEXT)
            log.info(f"warm-up synthesis done in {time.perf_counter() - started:.2f} s ({seconds:.2f} s audio); "
                     f"/ready now answers 200")
        except Exception as err:     # the app still serves; /ready says why it is not ready
            self.warmup_problem = f"warm-up synthesis failed: {err}"
            log.error(f"{self.warmup_problem}; /ready stays 503. Check the model and the log above.")
            return
        self.warmed_up.set()

    def version(self) -> dict:
        info = {"app": "cosyvoice-studio", "version": __version__, "git_commit": self.commit,
                "instance": self.instance.name, "port": self.args.port,
                "build_time": self.commit_time or self.started_at, "started_at": self.started_at,
                "engine": self.engine.name, "model": self.engine.model_label, "device": self.engine.device,
                "sample_rate": self.engine.sample_rate}
        info.update(self.engine.version_info())
        return info

    def status_line(self) -> str:
        stats = self.service.stats()
        line = (f"**引擎 Engine:** `{self.engine.name}` · **模型 Model:** {self.engine.model_label} · "
                f"**设备 Device:** {self.engine.device} · **队列 Queue:** {stats['busy_workers']} 合成中 busy, "
                f"{stats['queue_depth']} 等待 waiting")
        info = self.engine.version_info()
        extras = [f"{key.replace('_', ' ')} `{info[key]}`" for key in ("precision", "llm_weights", "quantize")
                  if info.get(key)]
        if extras:
            line += " · " + " · ".join(extras)
        line += "".join(f"  \nℹ️ {notice}" for notice in self.engine.startup_notices())
        return line

    def backend_view(self, level: str, request_filter: str):
        """Everything the Backend tab shows, from the job registry and the log files."""
        return (backend.job_rows(self.service.jobs.snapshot(), request_filter),
                backend.log_tail(self.args.log_dir, level, request_filter),
                backend.process_facts(self.engine, self.service.started),
                backend.recent_restarts(self.args.log_dir),
                backend.batch_job_rows(getattr(self, "batch", None)))

    def char_count(self, text) -> str:
        used = len(text.strip()) if isinstance(text, str) else 0
        limit = self.service.config.max_text_chars
        mark = "⚠️ " if used > limit else ""
        return f"{mark}{used} / {limit} 字符 characters"

    def preview(self, text, normalize=True) -> str:
        """What the engines will be given: the same lines as `python -m cosyvoice text`."""
        try:
            return f"{self.service.preview_text(text, normalize)}\nlength:     {spoken_length(text)}"
        except StudioError as err:
            return f"⚠️ {err}"

    # ---- request handlers: raw values in, the service validates -------------------------------
    def generate_ui(self, mode, text, prompt_wav, prompt_text, instruct_text, seed, speed, stream, normalize,
                    voice=None, request: gr.Request = None):
        """UI handler: clears the last result, reports queue place and progress, streams (rate, chunk) to
        the player, then offers the saved file; an error stays in the result area until the next request.

        The request runs in its own thread (ui_runs.PageRun): closing the tab does not stop it, Cancel does."""
        synthesis = SynthesisRequest(text=text, mode=mode, prompt_wav=prompt_wav, prompt_text=prompt_text,
                                     instruct_text=instruct_text, seed=seed, speed=speed, stream=stream,
                                     normalize=normalize, voice=voice)
        request_id = _request_id(request)
        problem = seed_problem(seed, MAX_SEED)
        if problem:
            yield None, None, f"❌ **失败 Failed** · req `{request_id}`  \n{problem}"
            return
        mode_label = mode if isinstance(mode, str) and mode in MODES_BY_ID else "unknown"
        run = PageRun(request_id, mode_label, lambda: self.service.run(synthesis, request_id), self.service.jobs)
        self.page_runs.add(getattr(request, "session_hash", None) or request_id, run).start()
        # The download box and summary are cleared at once; the player keeps its stream open (a None there
        # would end the streamed playlist before the first chunk).
        yield gr.skip(), None, f"⏳ 已提交 Submitted · req `{request_id}`"
        try:
            yield from self._page_events(run, request_id)
        except StudioError as err:
            yield None, None, f"❌ **失败 Failed** · req `{request_id}`  \n{err}"
        finally:
            run.page_left()
        if run.outcome == "cancelled":
            yield None, None, f"⏹ 已取消 Cancelled · req `{request_id}`: nothing was saved."

    def _page_events(self, run: PageRun, request_id: str):
        for event in run.events():
            if event is None:                # heartbeat: nothing new
                yield gr.skip(), gr.skip(), gr.skip()
                continue
            if event.notice:
                gr.Warning(event.notice, duration=8)      # toasts go away; the summary keeps every notice
            if event.progress is not None:
                yield gr.skip(), gr.skip(), f"⏳ {event.progress[1]} · req `{request_id}`"
            if event.chunk is not None:
                for piece in player_slices(event.chunk, self.engine.sample_rate):
                    yield (self.engine.sample_rate, piece), gr.skip(), gr.skip()
            if event.result is not None:
                r = event.result
                summary = (f"✅ 已保存 Saved `{r.path.name}` · {r.audio_seconds:.2f} s · RTF {r.rtf:.2f} · "
                           f"seed {r.seed} · engine `{self.engine.name}` · req `{r.request_id}`")
                summary += "".join(f"  \n⚠️ {notice}" for notice in r.notices)
                yield gr.skip(), str(r.path), summary

    def cancel_ui(self, request: gr.Request = None):
        run = self.page_runs.cancel(getattr(request, "session_hash", None) or "")
        if run is None:
            return gr.skip()
        return f"⏹ 正在取消 Cancelling · req `{run.request_id}`…"

    def synthesize_api(self, text: str, mode: str = "zero_shot", prompt_wav: str | None = None,
                       prompt_text: str = "", instruct_text: str = "", seed: int = 0, speed: float = 1.0,
                       stream: bool = False, normalize: bool = True, voice: str = "",
                       request: gr.Request = None) -> str:
        """Synthesise `text` and return the saved WAV (mode: zero_shot | cross_lingual | instruct).

        voice: a saved voice's name or id, used instead of prompt_wav/prompt_text (GET /v1/audio/voices).
        """
        synthesis = SynthesisRequest(text=text, mode=mode, prompt_wav=prompt_wav, prompt_text=prompt_text,
                                     instruct_text=instruct_text, seed=seed, speed=speed, stream=stream,
                                     normalize=normalize, voice=voice)
        request_id = _request_id(request)
        try:
            return str(self.service.synthesize(synthesis, request_id).path)
        except StudioError as err:
            raise gr.Error(f"{err} (req {request_id})", print_exception=False) from None


def _request_id(request: gr.Request | None) -> str:
    """An incoming X-Request-ID (from a proxy) names the request in the log; otherwise a fresh id."""
    headers = getattr(request, "headers", None) or {}
    raw = [(b"x-request-id", headers["x-request-id"].encode("latin-1"))] if "x-request-id" in headers else []
    return request_id_of({"headers": raw})


def raw(component):
    """`component` handing the service exactly what the client sent: typed checks and their messages
    live there, not in Gradio's converters. (An instance attribute, not a subclass: Gradio writes a
    .pyi stub beside the source of every component subclass.)"""
    component.preprocess = lambda payload: payload
    return component


def _recording_for_prompt_box(path: str) -> bytes:
    """The upload button's file as WAV, so the prompt box can play it; a bad file is said in a toast and the log."""
    try:
        return recording_as_wav(path)
    except StudioError as err:
        logger.warning(f"uploaded recording refused: {err}")
        raise gr.Error(str(err), print_exception=False) from None


def build_ui(studio: Studio) -> gr.Blocks:
    # delete_cache: uploads and Gradio's copies older than an hour are swept every 10 minutes.
    with gr.Blocks(title="CosyVoice Studio", delete_cache=(600, 3600)) as demo:
        gr.Markdown("# CosyVoice Studio · 零样本语音克隆 Zero-shot voice cloning")
        status = gr.Markdown(studio.status_line())
        with gr.Tab("合成 Synthesize"):
            with gr.Row():
                with gr.Column(scale=3):
                    mode = raw(gr.Radio([(m.label, m.id) for m in MODES], value=MODES[0].id, label="模式 Mode"))
                    steps = gr.Markdown(MODES[0].steps)
                    saved_voice = ui_voices.voice_dropdown(studio.service)
                    prompt_wav = gr.Audio(sources=["upload", "microphone"], type="filepath", elem_id="prompt-audio",
                                          label="参考音频 Prompt audio (3–15 s; upload or record)")
                    # Gradio's audio box refuses .webm (browsers call it video/webm): this button takes it
                    recording = gr.UploadButton("上传录音 Upload a recording (webm, m4a, ogg, opus, aac, wav, mp3, flac)",
                                                file_types=["audio", *PROMPT_SUFFIXES], size="sm", elem_id="prompt-upload")
                    recording.upload(_recording_for_prompt_box, recording, prompt_wav, **ui_voices.PRIVATE)
                    prompt_text = raw(gr.Textbox(label="参考音频文本 Prompt transcript", lines=2, elem_id="prompt-text",
                                             placeholder="参考音频里说的话 Exactly what the prompt recording says"))
                    with gr.Row(visible=False) as instruct_row:
                        preset = gr.Dropdown(preset_choices(studio.engine), label="指令预设 Instruction presets",
                                             value=None, scale=1, info=PRESET_INFO)
                        instruct_text = raw(gr.Textbox(label="指令 Instruction", scale=2,
                                                   placeholder="例如 e.g. 请用四川话说 / speak very fast"))
                    text = raw(gr.Textbox(label="合成文本 Text to synthesise", lines=5, elem_id="text-input",
                                      placeholder="输入要合成的文本 Type the text to speak…"))
                    with gr.Row():
                        char_count = gr.Markdown(studio.char_count(""), elem_id="char-count")
                        preview_button = gr.Button("预览 Preview", size="sm", scale=0, min_width=120)
                    preview_box = gr.Code(label="预览 Preview: normalized text, markup and pieces", language=None,
                                          visible=False, interactive=False, elem_id="text-preview", wrap_lines=True)
                    with gr.Accordion("发音标注 Pronunciation markup", open=False):
                        gr.Markdown(SYNTAX_HELP)
                with gr.Column(scale=2):
                    with gr.Row():
                        seed = raw(gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED,
                                         label="随机种子 Seed (same input + seed = same audio)", scale=3))
                        dice = gr.Button("🎲 随机 Random seed", scale=1, min_width=110, elem_id="random-seed")
                    speed = raw(gr.Slider(0.5, 2.0, value=1.0, step=0.05, label="语速 Speed"))
                    stream = raw(gr.Checkbox(value=False, label="流式播放 Stream while synthesising"))
                    normalize = raw(gr.Checkbox(value=True, label="文本规范化 Read numbers, dates and symbols as words"))
                    with gr.Row():
                        generate = gr.Button("生成 Generate", variant="primary", scale=3)
                        cancel = gr.Button("取消 Cancel", variant="stop", scale=1, elem_id="cancel")
                    audio_out = gr.Audio(label="合成音频 Output", streaming=True, autoplay=True, interactive=False,
                                         elem_id="output-audio")
                    file_out = gr.File(label="下载 Download", interactive=False)
                    result_md = gr.Markdown(elem_id="result")
                    ui_voices.save_voice_row(studio.service, prompt_wav, prompt_text, saved_voice)
        ui_voices.dialogue_tab(studio.service)
        jobs_tab(studio)                          # 任务 Jobs (#20, cosyvoice/batch/ui.py)
        ui_voices.history_tab(studio.service, dict(mode=mode, text=text, instruct_text=instruct_text, seed=seed,
                                                   speed=speed, voice=saved_voice, prompt_text=prompt_text))
        with gr.Tab("后台 Backend"):
            gr.Markdown("最近 50 个请求、运行日志与进程状态（只读，每 1.5 秒刷新） · The last 50 requests, the "
                        "runtime log and the process, read-only, refreshed every 1.5 s.")
            jobs_table = gr.Dataframe(headers=backend.JOB_COLUMNS, value=[], interactive=False, wrap=True,
                                      column_widths=backend.JOB_COLUMN_WIDTHS, label="请求 Requests",
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

        mode.change(lambda m: (MODES_BY_ID[m].steps, gr.update(visible=MODES_BY_ID[m].needs_instruction),
                               gr.update(visible=MODES_BY_ID[m].needs_transcript)),
                    inputs=mode, outputs=[steps, instruct_row, prompt_text], queue=False, api_visibility="private")
        preset.change(lambda instruction: instruction or gr.skip(),
                      inputs=preset, outputs=instruct_text, queue=False, api_visibility="private")
        dice.click(lambda: random.randint(0, MAX_SEED), outputs=seed, queue=False, api_visibility="private")
        ui_voices.wire_voice_dropdown(studio.service, saved_voice, prompt_wav, prompt_text)
        text.change(studio.char_count, inputs=text, outputs=char_count, queue=False, show_progress="hidden",
                    api_visibility="private")
        preview_button.click(lambda t, n: gr.update(value=studio.preview(t, n), visible=True),
                             inputs=[text, normalize], outputs=preview_box, queue=False, api_visibility="private")
        # The player is emptied by its own quick event first: inside the streaming handler a None would
        # end the stream's playlist, and an empty player must not keep the previous (or a failed) result.
        generate.click(lambda: None, outputs=audio_out, queue=False, show_progress="hidden",
                       api_visibility="private").then(
            studio.generate_ui,
            inputs=[mode, text, prompt_wav, prompt_text, instruct_text, seed, speed, stream, normalize, saved_voice],
            # "undocumented": scripts that stream may call /generate, but "Use via API" shows only
            # /synthesize, the endpoint meant for clients.
            outputs=[audio_out, file_out, result_md], api_name="generate", api_visibility="undocumented",
            show_progress="minimal", show_progress_on=[result_md])
        cancel.click(studio.cancel_ui, outputs=result_md, queue=False, api_visibility="private")
        # The API endpoint gets real components (hidden) so uploads and the returned file are handled by
        # Gradio's file machinery: clients send a file and receive the saved WAV.
        with gr.Column(visible=False):
            # Labels name the parameters in "Use via API"; the defaults make its example run as shown
            # (cross-lingual needs no transcript of the example recording).
            api_inputs = [raw(gr.Textbox(label="text", value="你好，欢迎使用语音合成工作室。")),
                          raw(gr.Textbox(label="mode", value="cross_lingual")),
                          gr.Audio(type="filepath", label="prompt_wav"),
                          raw(gr.Textbox(label="prompt_text")), raw(gr.Textbox(label="instruct_text")),
                          raw(gr.Number(label="seed", value=0, precision=0)), raw(gr.Number(label="speed", value=1.0)),
                          raw(gr.Checkbox(label="stream")), raw(gr.Checkbox(label="normalize", value=True)),
                          raw(gr.Textbox(label="voice", value=""))]
            api_output = gr.File()
            api_button = gr.Button()
        api_button.click(studio.synthesize_api, inputs=api_inputs, outputs=api_output, api_name="synthesize")
        gr.Timer(1.0).tick(studio.status_line, outputs=status, queue=False, show_progress="hidden",
                           api_visibility="private")
    # The service's Admission is the one queue: Gradio's never refuses (no size bound) and runs more
    # handlers at once than Admission admits and lets wait, so "busy" always comes from the service.
    admission = studio.service.stats()
    demo.queue(max_size=None, default_concurrency_limit=admission["workers"] + admission["queue_size"] + 32)
    return demo


def ensure_ffmpeg(run_dir: Path = ROOT / ".run" / "bin") -> str | None:
    """Gradio encodes streamed audio with an `ffmpeg` process; use the one bundled by imageio-ffmpeg
    (a PyPI wheel) when the system has none, so streaming works without an apt step."""
    import shutil

    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg

        bundled = Path(imageio_ffmpeg.get_ffmpeg_exe())
    except (ImportError, RuntimeError):
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    link = run_dir / "ffmpeg"
    if not link.exists() or link.resolve() != bundled.resolve():
        link.unlink(missing_ok=True)
        link.symlink_to(bundled)
    os.environ["PATH"] = f"{run_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    return str(link)


def retention_loop(studio: Studio, every_s: float = 3600.0) -> None:
    while True:
        try:
            removed = studio.service.clean_outputs()
            if removed:
                logger.bind(req="-").info(f"removed {len(removed)} output file(s) older than "
                                          f"{studio.args.outputs_retention_days:g} days")
        except OSError as err:
            logger.bind(req="-").warning(f"could not clean outputs/: {err}")
        time.sleep(every_s)


def create_app(args: argparse.Namespace) -> tuple[FastAPI, Studio]:
    auth = parse_auth(args.auth)
    try:
        origins = OriginPolicy(normalize_origins(args.allow_origin))
    except ValueError as err:
        raise StartupError(str(err)) from None
    gate = CredentialGate(auth=auth, api_key=args.api_key)
    # Our own upload/cache folder (one per port): the guard admits file payloads from it alone,
    # and delete_cache sweeps it, so no upload or copy outlives an hour.
    cache_dir = (args.cache_dir or ROOT / ".run" / f"gradio-{args.port}").resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(cache_dir)
    studio = Studio(args)
    app = FastAPI(title="CosyVoice Studio")

    # Plain async handlers that only read counters: they answer while workers synthesise.
    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse(studio.health())

    @app.get("/ready")
    async def ready() -> JSONResponse:
        ok, reason = studio.readiness()
        return JSONResponse({"ready": ok, "reason": reason}, status_code=200 if ok else 503)

    @app.get("/version")
    async def version() -> JSONResponse:
        return JSONResponse(studio.version())

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    # The OpenAI-compatible /v1 API: before the Gradio mount at "", which takes every other path.
    check_voices_dir(args.voices_dir, args.model_dir)
    openai_api.mount(app, studio.service, gate, max_upload_bytes=int(args.max_upload_mb * 2**20))
    studio.batch = mount_jobs(app, studio.service, args, gate)   # /v1/jobs and /v1/batches (#20)

    demo = build_ui(studio)
    outputs = Path(args.outputs_dir).resolve()
    gr.set_static_paths([str(outputs)])          # results are served from outputs/, never copied to the cache
    # The login form's password is checked by the gate (constant time on bytes, any UTF-8).
    app = gr.mount_gradio_app(app, demo, path="", auth=gate.password_matches if auth else None,
                              allowed_paths=[str(outputs)],
                              max_file_size=int(args.max_upload_mb * 2**20), head=PLAYER_HEAD)
    # Gradio checks that file inputs were uploaded only once `has_launched` is set, which launch() does
    # and mount_gradio_app does not; the guard below refuses such paths first, this is the second lock.
    demo.has_launched = True
    gradio_app = next(route.app for route in app.routes if isinstance(getattr(route, "app", None), gr.routes.App))

    def logged_in(scope) -> bool:
        cookies = _cookies(scope)
        token = (cookies.get(f"access-token-{gradio_app.cookie_id}")
                 or cookies.get(f"access-token-unsecure-{gradio_app.cookie_id}"))
        return token is not None and token in gradio_app.tokens

    gate.logged_in = logged_in
    uploads = UploadBudget(lambda: str(cache_dir), per_minute=args.uploads_per_minute,
                           bytes_per_minute=int(args.upload_mb_per_minute * 2**20),
                           cache_bytes=int(args.upload_cache_mb * 2**20))
    app.add_middleware(HttpGuard, config=GuardConfig(
        upload_folder=lambda: str(cache_dir), max_upload_bytes=int(args.max_upload_mb * 2**20), gate=gate,
        public_metrics=args.public_metrics, origins=origins, uploads=uploads))
    if origins.allowed:      # pages on an allowed origin also need CORS answers (preflight, readable replies)
        app.add_middleware(CORSMiddleware, allow_origins=sorted(origins.allowed), allow_credentials=True,
                           allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["authorization", "content-type", "x-request-id"],
                           expose_headers=["x-request-id", "x-seed", "retry-after"])
    app.add_middleware(InstanceMiddleware, info=studio.instance)   # outermost: X-Instance, the fault switch
    return app, studio


def _cookies(scope) -> dict[str, str]:
    from http.cookies import SimpleCookie

    jar = SimpleCookie()
    for key, value in scope.get("headers", ()):
        if key == b"cookie":
            try:
                jar.load(value.decode("latin-1"))
            except Exception:
                pass
    return {name: morsel.value for name, morsel in jar.items()}


class Server(uvicorn.Server):
    """uvicorn that, on SIGTERM/SIGINT, drains first: no new requests, /ready 503, running ones finish.

    It keeps listening while it drains, because a client fetches its finished file with a second
    request; a second signal stops at once.
    """

    def __init__(self, config: uvicorn.Config, studio: Studio, grace_s: float):
        super().__init__(config)
        self.studio, self.grace_s = studio, grace_s
        self.stop_signal: str | None = None

    def handle_exit(self, sig: int, frame) -> None:
        if self.stop_signal is not None:
            return super().handle_exit(sig, frame)
        self.stop_signal = signal.Signals(sig).name
        stats = self.studio.service.stats()
        logger.bind(req="-").info(
            f"{self.stop_signal} received: admitting no new requests; {stats['busy_workers']} running and "
            f"{stats['queue_depth']} waiting may finish within {self.grace_s:g} s")
        self.studio.service.drain()
        threading.Thread(target=self._stop_when_idle, args=(sig, frame), daemon=True, name="drain").start()

    def _stop_when_idle(self, sig: int, frame) -> None:
        self.studio.service.wait_idle(self.grace_s)
        time.sleep(2.0)              # time for the last client to fetch its file
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self):
        # uvicorn's own version re-raises the signal once it has shut down, which would kill the
        # process before main() can log "stopped"; a drained stop is a clean exit (code 0).
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log_file = setup_logging(args.log_dir, json_lines=args.log_format == "json")
    log = logger.bind(req="-")
    if setup_tracing():
        log.info(f"traces go to {os.environ['OTEL_EXPORTER_OTLP_ENDPOINT']} (OpenTelemetry OTLP)")
    log.info(f"starting CosyVoice Studio {__version__} (engine {args.engine}, log {log_file}); command line: "
             f"{' '.join(masked_argv(sys.argv[1:] if argv is None else argv))}")
    if ensure_ffmpeg() is None:
        log.warning("no ffmpeg found: streaming playback in the browser will fail; pip install imageio-ffmpeg "
                    "or apt-get install ffmpeg (saved files are not affected)")
    try:
        for warning in read_secrets(args, os.environ):
            log.warning(warning)
        app, studio = create_app(args)
    except (StudioError, StartupError) as err:
        log.error(f"cannot start: {err}")
        return 2
    set_stage_lookup(studio.service.jobs.stage_of)
    watch_gpu_memory()
    for notice in studio.engine.startup_notices():
        log.warning(notice)
    if args.host in ("0.0.0.0", "::") and not args.auth:
        log.warning(f"listening on all interfaces ({args.host}:{args.port}) without a login: anyone who can reach "
                    f"this machine can use it. Set --auth user:password or COSYVOICE_AUTH, or bind 127.0.0.1.")
    removed = studio.service.remove_stale_partials()
    if removed:
        log.info(f"removed {len(removed)} partial file(s) a previous run left in {args.outputs_dir}")
    problem = studio.service.outputs_problem(max_age_s=0)
    if problem:
        log.error(f"results cannot be saved: {problem} /ready answers 503 until this is fixed.")
    threading.Thread(target=retention_loop, args=(studio,), daemon=True, name="outputs-retention").start()
    threading.Thread(target=studio.warm_up, daemon=True, name="warm-up").start()
    log.info(f"engine {studio.engine.name} ready ({studio.engine.model_label}, {studio.engine.device}); "
             f"UI at http://{args.host}:{args.port}")
    # Requests are drained before uvicorn is told to stop, so its own wait only covers idle streams.
    server = Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                                   timeout_graceful_shutdown=3), studio, args.grace_seconds)
    server.run()
    finished = studio.service.wait_idle(0)
    log.info(f"stopped (signal {server.stop_signal or 'none'}; "
             + ("no request was cut off)" if finished else "requests still running after the grace period were cut off)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
