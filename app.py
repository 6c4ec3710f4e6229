"""CosyVoice Studio WebUI: Gradio Blocks on port 7860 with /health and /version.

app.py is thin: it parses flags, builds the engine and the service, lays out the UI and mounts
the HTTP endpoints. Every request goes through cosyvoice.service.SynthesisService.
"""
from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import gradio as gr
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from loguru import logger

from cosyvoice import __version__
from cosyvoice.engines.registry import DEFAULT_MODEL_DIR, ENGINE_CHOICES, create_engine
from cosyvoice.errors import StudioError
from cosyvoice.instruct import PRESETS, strip_wrapper
from cosyvoice.log import setup_logging
from cosyvoice.modes import BY_ID as MODES_BY_ID, MODES
from cosyvoice.instance import InstanceMiddleware, instance_info
from cosyvoice.metrics import REGISTRY, set_build_info
from cosyvoice.service import MAX_SEED, ServiceConfig, SynthesisRequest, SynthesisService
from cosyvoice.text.frontend import TextFrontend
from cosyvoice.text.help import SYNTAX_HELP

ROOT = Path(__file__).resolve().parent

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="CosyVoice Studio WebUI")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (run.sh uses 0.0.0.0)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--engine", choices=ENGINE_CHOICES, default="auto")
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32")
    parser.add_argument("--max-text-chars", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=2, help="requests synthesised at once")
    parser.add_argument("--queue-size", type=int, default=8, help="requests allowed to wait")
    parser.add_argument("--outputs-retention-days", type=float, default=7.0)
    parser.add_argument("--outputs-dir", type=Path, default=ROOT / "outputs")
    parser.add_argument("--log-dir", type=Path, default=ROOT / "logs")
    parser.add_argument("--g2p-dict", type=Path, default=ROOT / "configs" / "G2P_replace_dict.jsonl")
    parser.add_argument("--pause", type=float, default=0.2, help="seconds of silence between sentences")
    parser.add_argument("--auth", default=os.environ.get("COSYVOICE_AUTH"),
                        help="user:password to require a login (or env COSYVOICE_AUTH)")
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
        self.engine = create_engine(args.engine, args.model_dir, args.device, args.precision)
        config = ServiceConfig(outputs_dir=args.outputs_dir, max_text_chars=args.max_text_chars,
                               workers=args.concurrency, queue_size=args.queue_size,
                               retention_days=args.outputs_retention_days, pause_seconds=args.pause)
        self.service = SynthesisService(self.engine, config, TextFrontend(args.g2p_dict))
        self.commit, self.commit_time = git_commit()
        self.started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.instance = instance_info(args.port)
        set_build_info(__version__, self.commit, self.engine.name, self.engine.model_label, self.instance.name)

    def health(self) -> dict:
        stats = self.service.stats()
        return {"status": "ok", "engine": self.engine.name, "model_loaded": True,
                "uptime_s": round(time.time() - self.service.started, 1),
                "queue_depth": stats["queue_depth"], "busy_workers": stats["busy_workers"],
                "workers": stats["workers"]}

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
        line += "".join(f"  \nℹ️ {notice}" for notice in self.engine.startup_notices())
        return line

    # ---- request handlers -------------------------------------------------------------------
    def _request(self, mode, text, prompt_wav, prompt_text, instruct_text, seed, speed, stream,
                 normalize=True) -> SynthesisRequest:
        return SynthesisRequest(text=text or "", mode=mode, prompt_wav=prompt_wav, prompt_text=prompt_text or "",
                                instruct_text=instruct_text or "", seed=None if seed is None else int(seed),
                                speed=float(speed), stream=bool(stream), normalize=bool(normalize))

    def generate_ui(self, mode, text, prompt_wav, prompt_text, instruct_text, seed, speed, stream, normalize):
        """UI handler: streams (rate, chunk) to the player, then offers the saved file."""
        request = self._request(mode, text, prompt_wav, prompt_text, instruct_text, seed, speed, stream, normalize)
        request_id = uuid.uuid4().hex[:6]
        try:
            for event in self.service.run(request, request_id):
                if event.notice:
                    gr.Warning(event.notice)
                if event.chunk is not None:
                    yield (self.engine.sample_rate, event.chunk), gr.skip(), gr.skip()
                if event.result is not None:
                    r = event.result
                    summary = (f"✅ 已保存 Saved `{r.path.name}` · {r.audio_seconds:.2f} s · RTF {r.rtf:.2f} · "
                               f"seed {r.seed} · req {r.request_id}")
                    summary += "".join(f"  \n⚠️ {notice}" for notice in r.notices)
                    yield gr.skip(), str(r.path), summary
        except StudioError as err:
            raise gr.Error(f"{err} (req {request_id})", print_exception=False) from None

    def synthesize_api(self, text: str, mode: str = "zero_shot", prompt_wav: str | None = None,
                       prompt_text: str = "", instruct_text: str = "", seed: int = 0, speed: float = 1.0,
                       stream: bool = False, normalize: bool = True) -> str:
        """Synthesise `text` and return the saved WAV (mode: zero_shot | cross_lingual | instruct)."""
        request = self._request(mode, text, prompt_wav, prompt_text, instruct_text, seed, speed, stream, normalize)
        try:
            return str(self.service.synthesize(request).path)
        except StudioError as err:
            raise gr.Error(str(err), print_exception=False) from None


def build_ui(studio: Studio) -> gr.Blocks:
    with gr.Blocks(title="CosyVoice Studio") as demo:
        gr.Markdown("# CosyVoice Studio · 零样本语音克隆 Zero-shot voice cloning")
        status = gr.Markdown(studio.status_line())
        with gr.Row():
            with gr.Column(scale=3):
                mode = gr.Radio([(m.label, m.id) for m in MODES], value=MODES[0].id, label="模式 Mode")
                steps = gr.Markdown(MODES[0].steps)
                text = gr.Textbox(label="合成文本 Text to synthesise", lines=5,
                                  placeholder="输入要合成的文本 Type the text to speak…")
                with gr.Accordion("发音标注 Pronunciation markup", open=False):
                    gr.Markdown(SYNTAX_HELP)
                prompt_wav = gr.Audio(sources=["upload", "microphone"], type="filepath",
                                      label="参考音频 Prompt audio (3–15 s; upload or record)")
                prompt_text = gr.Textbox(label="参考音频文本 Prompt transcript", lines=2,
                                         placeholder="参考音频里说的话 Exactly what the prompt recording says")
                with gr.Row(visible=False) as instruct_row:
                    preset = gr.Dropdown([label for label, _ in PRESETS], label="指令预设 Instruction presets",
                                         value=None, scale=1)
                    instruct_text = gr.Textbox(label="指令 Instruction", scale=2,
                                               placeholder="例如 e.g. 请用四川话说 / speak very fast")
            with gr.Column(scale=2):
                with gr.Row():
                    seed = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED,
                                     label="随机种子 Seed (same input + seed = same audio)", scale=3)
                    dice = gr.Button("🎲", scale=1, min_width=60)
                speed = gr.Slider(0.5, 2.0, value=1.0, step=0.05, label="语速 Speed")
                stream = gr.Checkbox(value=False, label="流式播放 Stream while synthesising")
                normalize = gr.Checkbox(value=True, label="文本规范化 Read numbers, dates and symbols as words")
                generate = gr.Button("生成 Generate", variant="primary")
                audio_out = gr.Audio(label="合成音频 Output", streaming=True, autoplay=True, interactive=False)
                file_out = gr.File(label="下载 Download", interactive=False)
                result_md = gr.Markdown()

        mode.change(lambda m: (MODES_BY_ID[m].steps, gr.update(visible=MODES_BY_ID[m].needs_instruction),
                               gr.update(visible=MODES_BY_ID[m].needs_transcript)),
                    inputs=mode, outputs=[steps, instruct_row, prompt_text], queue=False)
        preset.change(lambda label: strip_wrapper(dict(PRESETS)[label]) if label in dict(PRESETS) else gr.skip(),
                      inputs=preset, outputs=instruct_text, queue=False)
        dice.click(lambda: random.randint(0, MAX_SEED), outputs=seed, queue=False)
        generate.click(studio.generate_ui,
                       inputs=[mode, text, prompt_wav, prompt_text, instruct_text, seed, speed, stream, normalize],
                       outputs=[audio_out, file_out, result_md], api_name="generate")
        # The API endpoint gets real components (hidden) so uploads and the returned file are handled by
        # Gradio's file machinery: clients send a file and receive the saved WAV.
        with gr.Column(visible=False):
            api_inputs = [gr.Textbox(), gr.Textbox(value="zero_shot"), gr.Audio(type="filepath"), gr.Textbox(),
                          gr.Textbox(), gr.Number(value=0, precision=0), gr.Number(value=1.0), gr.Checkbox(),
                          gr.Checkbox(value=True)]
            api_output = gr.File()
            api_button = gr.Button()
        api_button.click(studio.synthesize_api, inputs=api_inputs, outputs=api_output, api_name="synthesize")
        gr.Timer(3.0).tick(studio.status_line, outputs=status, queue=False)
    # The service does its own admission (and logs a refusal); Gradio's limits only back it up.
    demo.queue(max_size=studio.args.queue_size + studio.args.concurrency + 4,
               default_concurrency_limit=studio.args.concurrency + studio.args.queue_size)
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
    studio = Studio(args)
    app = FastAPI(title="CosyVoice Studio")

    # Plain (non-async-blocking) handlers: they only read counters, so they answer while workers synthesise.
    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse(studio.health())

    @app.get("/version")
    async def version() -> JSONResponse:
        return JSONResponse(studio.version())

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        studio.service.stats()      # refresh the queue gauges
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    auth = tuple(args.auth.split(":", 1)) if args.auth and ":" in args.auth else None
    demo = build_ui(studio)
    app = gr.mount_gradio_app(app, demo, path="", auth=auth, allowed_paths=[str(args.outputs_dir.resolve())])
    app.add_middleware(InstanceMiddleware, info=studio.instance)   # X-Instance, X-Request-ID, fault switch
    return app, studio


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log_file = setup_logging(args.log_dir)
    log = logger.bind(req="-")
    log.info(f"starting CosyVoice Studio {__version__} (engine {args.engine}, log {log_file})")
    if ensure_ffmpeg() is None:
        log.warning("no ffmpeg found: streaming playback in the browser will fail; pip install imageio-ffmpeg "
                    "or apt-get install ffmpeg (saved files are not affected)")
    try:
        app, studio = create_app(args)
    except StudioError as err:
        log.error(f"cannot start: {err}")
        return 2
    if args.host in ("0.0.0.0", "::") and not args.auth:
        log.warning(f"listening on all interfaces ({args.host}:{args.port}) without a login: anyone who can reach "
                    f"this machine can use it. Set --auth user:password or COSYVOICE_AUTH, or bind 127.0.0.1.")
    threading.Thread(target=retention_loop, args=(studio,), daemon=True, name="outputs-retention").start()
    log.info(f"engine {studio.engine.name} ready ({studio.engine.model_label}, {studio.engine.device}); "
             f"UI at http://{args.host}:{args.port}")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=5)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
