"""The web server: `main` reads the settings, builds the `Studio` (engine, service, start-up facts),
mounts the probes, the /v1 API and the Gradio page (cosyvoice.ui.layout) behind the HTTP guard, and runs
uvicorn with a draining shutdown. `python app.py` calls `main`.
"""
from __future__ import annotations

import contextlib
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
from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cosyvoice import __version__, settings

from cosyvoice.ui import backend

from cosyvoice.server import openai_api
from cosyvoice.engines.registry import create_engine
from cosyvoice.errors import StudioError
from cosyvoice.server.http_guard import CredentialGate, GuardConfig, HttpGuard, OriginPolicy, normalize_origins
from cosyvoice.server.instance import InstanceMiddleware, instance_info
from cosyvoice.ops.log import masked_argv, set_stage_lookup, setup_logging
from cosyvoice.ops.metrics import REGISTRY, set_build_info, watch_gpu_memory
from cosyvoice.service.synthesis import SynthesisService
from cosyvoice.settings import ROOT, Settings, StartupError
from cosyvoice.text.frontend import TextFrontend
from cosyvoice.ops.tracing import setup_tracing
from cosyvoice.jobs.router import JobsRuntime, mount_jobs
from cosyvoice.ui.layout import build_ui
from cosyvoice.ui.runs import PLAYER_HEAD, PageRuns
from cosyvoice.server.upload_budget import UploadBudget
from cosyvoice.voices.library import check_voices_dir

WARMUP_TEXT = "你好。"
WARMUP_PROMPT_TEXT = "你好，欢迎使用语音合成工作室。今天天气很好。"


def synthetic_prompt():
    """A spoken prompt made on the spot (espeak-ng), so the warm-up needs no recording on disk."""
    from cosyvoice.audio.prompt import prompt_from_samples
    from cosyvoice.engines.lite import espeak

    spoken = espeak.speak(WARMUP_PROMPT_TEXT, espeak.EspeakParams(voice="cmn"))
    return prompt_from_samples(spoken.samples, spoken.sample_rate)


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


def git_commit() -> tuple[str | None, str | None]:
    """The checked-out commit and its time, for /version; (None, None) outside a git checkout."""
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

    def __init__(self, config: Settings):
        self.settings = config
        self.engine = create_engine(config.engine)
        self.service = SynthesisService(self.engine, config.service, TextFrontend(config.service.g2p_dict))
        self.commit, self.commit_time = git_commit()
        self.started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.instance = instance_info(config.server.port, config.server.instance_name, config.server.fault)
        set_build_info(__version__, self.commit, self.engine.name, self.engine.model_label, self.instance.name)
        self.warmed_up = threading.Event()
        self.warmup_problem: str | None = None
        self.page_runs = PageRuns()
        self.jobs: JobsRuntime | None = None         # durable jobs, mounted by create_app

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
        time.sleep(self.settings.server.warmup_delay_s)
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
                "instance": self.instance.name, "port": self.settings.server.port,
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
        return (backend.job_rows(self.service.requests.snapshot(), request_filter),
                backend.log_tail(self.settings.server.log_dir, level, request_filter),
                backend.process_facts(self.engine, self.service.started),
                backend.recent_restarts(self.settings.server.log_dir),
                backend.batch_job_rows(self.jobs))


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
    settings.apply_process_env(path_prepend=run_dir)
    return str(link)


def retention_loop(studio: Studio, every_s: float = 3600.0) -> None:
    while True:
        try:
            removed = studio.service.clean_outputs()
            if removed:
                logger.bind(req="-").info(f"removed {len(removed)} output file(s) older than "
                                          f"{studio.settings.service.retention_days:g} days")
        except OSError as err:
            logger.bind(req="-").warning(f"could not clean outputs/: {err}")
        time.sleep(every_s)


def create_app(config: Settings) -> tuple[FastAPI, Studio]:
    """The whole HTTP app (probes, /v1, the Gradio page, the guard) and the Studio behind it."""
    server = config.server
    auth = parse_auth(server.auth)
    try:
        origins = OriginPolicy(normalize_origins(list(server.allow_origin)))
    except ValueError as err:
        raise StartupError(str(err)) from None
    gate = CredentialGate(auth=auth, api_key=server.api_key)
    # Our own upload/cache folder (one per port): the guard admits file payloads from it alone,
    # and delete_cache sweeps it, so no upload or copy outlives an hour.
    cache_dir = (server.cache_dir or ROOT / ".run" / f"gradio-{server.port}").resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    settings.apply_process_env(gradio_temp_dir=cache_dir)
    studio = Studio(config)
    app = FastAPI(title="CosyVoice Studio")
    mount_probes(app, studio)
    # The OpenAI-compatible /v1 API: before the Gradio mount at "", which takes every other path.
    check_voices_dir(config.service.voices_dir, config.engine.model_dir)
    max_upload_bytes = int(server.max_upload_mb * 2**20)
    openai_api.mount(app, studio.service, gate, max_upload_bytes=max_upload_bytes)
    studio.jobs = mount_jobs(app, studio.service, config.jobs, gate)     # /v1/jobs and /v1/batches (#20)
    app, demo = mount_ui(app, studio, gate if auth else None, max_upload_bytes)
    gate.logged_in = gradio_internals(app, demo)
    uploads = UploadBudget(lambda: str(cache_dir), per_minute=server.uploads_per_minute,
                           bytes_per_minute=int(server.upload_mb_per_minute * 2**20),
                           cache_bytes=int(server.upload_cache_mb * 2**20))
    app.add_middleware(HttpGuard, config=GuardConfig(
        upload_folder=lambda: str(cache_dir), max_upload_bytes=max_upload_bytes, gate=gate,
        public_metrics=server.public_metrics, origins=origins, uploads=uploads))
    if origins.allowed:      # pages on an allowed origin also need CORS answers (preflight, readable replies)
        app.add_middleware(CORSMiddleware, allow_origins=sorted(origins.allowed), allow_credentials=True,
                           allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["authorization", "content-type", "x-request-id"],
                           expose_headers=["x-request-id", "x-seed", "retry-after"])
    app.add_middleware(InstanceMiddleware, info=studio.instance)   # outermost: X-Instance, the fault switch
    return app, studio


def mount_probes(app: FastAPI, studio: Studio) -> None:
    """/health, /ready, /version, /metrics: plain async handlers that only read counters, so they
    answer while workers synthesise."""
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


def mount_ui(app: FastAPI, studio: Studio, gate: CredentialGate | None, max_upload_bytes: int):
    """The Gradio page at "", with its login form checked by the gate (constant time on bytes, any UTF-8);
    the mounted app and the Blocks."""
    demo = build_ui(studio)
    outputs = Path(studio.settings.service.outputs_dir).resolve()
    gr.set_static_paths([str(outputs)])          # results are served from outputs/, never copied to the cache
    app = gr.mount_gradio_app(app, demo, path="", auth=gate.password_matches if gate else None,
                              allowed_paths=[str(outputs)], max_file_size=max_upload_bytes, head=PLAYER_HEAD)
    return app, demo


def gradio_internals(app: FastAPI, demo: gr.Blocks):
    """The two places we reach into Gradio's private state (no public API exists for either; checked
    with gradio 6.31):

    - `demo.has_launched`: Gradio checks that file inputs were uploaded only once it is set, which
      launch() does and mount_gradio_app does not; the guard refuses such paths first, this is the
      second lock.
    - the login cookie (`access-token[-unsecure]-<cookie_id>`) and token table of the mounted app:
      the returned function tells the gate whether a request comes from a logged-in page
      (tests/integration/test_credential_gate.py fails if Gradio renames them)."""
    demo.has_launched = True
    mounted = (getattr(route, "app", None) for route in app.routes)
    gradio_app = next(inner for inner in mounted if isinstance(inner, gr.routes.App))

    def logged_in(scope) -> bool:
        cookies = _cookies(scope)
        token = (cookies.get(f"access-token-{gradio_app.cookie_id}")
                 or cookies.get(f"access-token-unsecure-{gradio_app.cookie_id}"))
        return token is not None and token in gradio_app.tokens

    return logged_in


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
    """Start the server from the command line and the environment; 2 when the settings forbid starting."""
    args = settings.server_parser().parse_args(argv)
    log_dir, log_format = settings.log_target(args)
    log_file = setup_logging(log_dir, json_lines=log_format == "json")
    log = logger.bind(req="-")
    try:
        config = settings.settings_from(args)
        for warning in config.warnings:
            log.warning(warning)
        if setup_tracing(config.server.otlp_endpoint, config.server.otel_service_name):
            log.info(f"traces go to {config.server.otlp_endpoint} (OpenTelemetry OTLP)")
        log.info(f"starting CosyVoice Studio {__version__} (engine {config.engine.engine}, log {log_file}); "
                 f"command line: {' '.join(masked_argv(sys.argv[1:] if argv is None else argv))}")
        if ensure_ffmpeg() is None:
            log.warning("no ffmpeg found: streaming playback in the browser will fail; pip install imageio-ffmpeg "
                        "or apt-get install ffmpeg (saved files are not affected)")
        app, studio = create_app(config)
    except (StudioError, StartupError) as err:
        log.error(f"cannot start: {err}")
        return 2
    start_background(studio)
    server = config.server
    log.info(f"engine {studio.engine.name} ready ({studio.engine.model_label}, {studio.engine.device}); "
             f"UI at http://{server.host}:{server.port}")
    # Requests are drained before uvicorn is told to stop, so its own wait only covers idle streams.
    runner = Server(uvicorn.Config(app, host=server.host, port=server.port, log_level="warning",
                                   timeout_graceful_shutdown=3), studio, server.grace_seconds)
    runner.run()
    finished = studio.service.wait_idle(0)
    log.info(f"stopped (signal {runner.stop_signal or 'none'}; "
             + ("no request was cut off)" if finished else "requests still running after the grace period were cut off)"))
    return 0


def start_background(studio: Studio) -> None:
    """What runs beside the server: start-up warnings and clean-up, the retention sweep, the warm-up."""
    log, server = logger.bind(req="-"), studio.settings.server
    set_stage_lookup(studio.service.requests.stage_of)
    watch_gpu_memory()
    for notice in studio.engine.startup_notices():
        log.warning(notice)
    if server.host in ("0.0.0.0", "::") and not server.auth:
        log.warning(f"listening on all interfaces ({server.host}:{server.port}) without a login: anyone who can "
                    f"reach this machine can use it. Set --auth user:password or COSYVOICE_AUTH, or bind 127.0.0.1.")
    removed = studio.service.remove_stale_partials()
    if removed:
        log.info(f"removed {len(removed)} partial file(s) a previous run left in {studio.settings.service.outputs_dir}")
    problem = studio.service.outputs_problem(max_age_s=0)
    if problem:
        log.error(f"results cannot be saved: {problem} /ready answers 503 until this is fixed.")
    threading.Thread(target=retention_loop, args=(studio,), daemon=True, name="outputs-retention").start()
    threading.Thread(target=studio.warm_up, daemon=True, name="warm-up").start()
