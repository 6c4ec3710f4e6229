"""Settings declared once: every flag and environment variable the studio reads, and the only module
that reads (or writes) the process environment.

Three frozen dataclasses hold them — `EngineConfig` (which engine, where it runs), `ServiceConfig`
(limits, queue, folders of the service) and `ServerConfig` (the web server's own settings). Each
field that a user can set declares its flag, environment variable and help in its metadata
(`setting(...)`); `add_flags` builds the argparse parser from them and `configs_from` builds the
configs from the parsed flags and the environment, a flag winning over its variable. Collaborators
get the config objects whole, never the argparse Namespace.

Stdlib argparse rather than pydantic-settings or tyro: the flags, their spelling (`--no-cuda-graphs`,
repeatable `--allow-origin`) and `--help` must stay exactly as users know them, three small
dataclasses do not need a validation framework, and it adds no dependency; the metadata table
gives the one place to declare a setting that those libraries would.

The other environment reads of the package (compiler, kernel cache, a child process's environment,
the ffmpeg PATH and Gradio's temp folder) go through the small functions at the end.
"""
from __future__ import annotations

import argparse
import os
import shutil
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from cosyvoice.engines.cosyvoice3.model_dir import DEFAULT_MODEL_DIR, LLM_WEIGHTS

MAX_FILE_BYTES = 25 * 1024 * 1024   # largest upload (prompt audio) by default; 30 s of 48 kHz stereo float WAV is 11.5 MB

ROOT = Path(__file__).resolve().parents[1]     # the repo root: outputs/, logs/, configs/, voices/ live here
ENGINE_CHOICES = ("auto", "lite", "cosyvoice3")
PRECISION_CHOICES = ("auto", "fp32", "fp16", "bf16")
DEFAULT_MIN_FREE_MB = 50.0


class StartupError(Exception):
    """A flag or the environment makes starting impossible; the message says what to change."""


def setting(flag: str | None = None, *, env: str | None = None, help: str = "", **argparse_kw: Any) -> dict:
    """A field's metadata: its flag (None: derived from the field name), environment variable, help,
    and whatever else argparse needs (type, choices, action, metavar)."""
    return {"setting": {"flag": flag, "env": env, "help": help, "kw": argparse_kw}}


def _setting(f: Field) -> dict | None:
    """A field's `setting(...)` metadata; None for fields that are not user settings."""
    return f.metadata.get("setting")


def flag_of(f: Field) -> str:
    """A setting's command-line flag: declared, or the field name as --kebab-case."""
    declared = (_setting(f) or {}).get("flag")
    return declared or "--" + f.name.replace("_", "-")


@dataclass(frozen=True)
class EngineConfig:
    """Everything that chooses and places the engine; built once by a front end and passed in whole."""
    engine: str = field(default="auto", metadata=setting(
        choices=ENGINE_CHOICES, help="auto: cosyvoice3 when --model-dir is complete, else the embedded lite engine"))
    model_dir: Path = field(default=DEFAULT_MODEL_DIR, metadata=setting(type=Path, help="the model folder"))
    device: str = field(default="auto", metadata=setting(help="auto, cpu, cuda or cuda:N"))
    precision: str = field(default="auto", metadata=setting(
        choices=PRECISION_CHOICES, help="auto: on CUDA the LLM in bf16 (fp16 without native bf16), the flow in "
                                        "fp16, HiFT fp32; fp32 on CPU (see README, Precision)"))
    llm_weights: str = field(default=LLM_WEIGHTS, metadata=setting(
        help="LLM checkpoint in the model dir: llm.pt, or llm.rl.pt where the dir has it"))
    batch_slots: int | None = field(default=None, metadata=setting(
        type=int, help="requests decoded together by the LLM; none: 4 on CUDA, 2 on CPU"))
    quantize: str | None = field(default=None, metadata=setting(
        choices=("int8",), help="int8 LLM projections (fbgemm, CPU only); faster, nearly the same tokens"))
    cuda_graphs: bool = field(default=True, metadata=setting(
        "--no-cuda-graphs", action="store_false", help="run the one-token decode step without CUDA graph capture"))
    stream_cache_gb: float | None = field(default=None, metadata=setting(
        type=float, help="memory for the flow caches of all streaming requests together; when full, streams "
                         "stop caching (slower, same audio); none: half the device's free memory at start"))


@dataclass(frozen=True)
class ServiceConfig:
    """The service's limits, queue and folders (cosyvoice.service.synthesis.SynthesisService)."""
    outputs_dir: Path = field(default=ROOT / "outputs", metadata=setting(type=Path, help="where results are saved"))
    max_text_chars: int = field(default=2000, metadata=setting(type=int, help="longest text accepted"))
    max_prompt_text_chars: int = 300     # a 30 s prompt holds far fewer characters than this
    max_instruct_chars: int = 200
    max_piece_units: int = 80            # the official packing: pieces of up to 80 units (zh chars, en tokens)
    workers: int | None = field(default=None, metadata=setting(
        "--concurrency", type=int, help="requests synthesised at once; none: what the engine runs well in parallel"))
    queue_size: int = field(default=8, metadata=setting(type=int, help="requests allowed to wait"))
    retention_days: float = field(default=7.0, metadata=setting(
        "--outputs-retention-days", type=float, help="results older than this are deleted (hourly sweep)"))
    voice_cache_size: int = 16
    voices_dir: Path = field(default=ROOT / "voices", metadata=setting(
        type=Path, help="saved voices (never inside the model dir)"))
    min_free_mb: float = field(default=DEFAULT_MIN_FREE_MB, metadata=setting(
        type=float, help="free space outputs/ must keep: below it requests get 507 and /ready 503"))
    loudness_lufs: float | None = field(default=None, metadata=setting(
        "--loudness", type=float, metavar="LUFS",
        help="bring every output to this loudness, e.g. -16; none: peaks are only limited to -1 dBFS"))
    g2p_dict: Path = field(default=ROOT / "configs" / "G2P_replace_dict.jsonl", metadata=setting(
        type=Path, help="pronunciation replacements for the text front end"))


@dataclass(frozen=True)
class ServerConfig:
    """The web server's own settings (cosyvoice.server.app)."""
    host: str = field(default="127.0.0.1", metadata=setting(help="address to bind (run.sh uses 0.0.0.0)"))
    port: int = field(default=7860, metadata=setting(type=int, help="port to listen on"))
    log_dir: Path = field(default=ROOT / "logs", metadata=setting(type=Path, help="runtime.log and friends"))
    log_format: str = field(default="text", metadata=setting(
        choices=("text", "json"), help="json: also one JSON object per line in <log dir>/runtime.jsonl"))
    auth: str | None = field(default=None, metadata=setting(
        env="COSYVOICE_AUTH", help="user:password to require a login. Safer: the environment variable or "
                                   "--auth-file, which other users of the machine cannot read from the process list"))
    auth_file: Path | None = field(default=None, metadata=setting(
        type=Path, help="a file holding user:password (first line; chmod 600)"))
    public_metrics: bool = field(default=False, metadata=setting(
        action="store_true", help="with --auth, still serve /metrics and /version without a login (for scrapers)"))
    grace_seconds: float = field(default=30.0, metadata=setting(
        type=float, help="on SIGTERM, how long running requests may take to finish"))
    max_upload_mb: float = field(default=MAX_FILE_BYTES / 2**20, metadata=setting(
        type=float, help="largest upload accepted (refused before it is stored)"))
    uploads_per_minute: int = field(default=60, metadata=setting(
        type=int, help="uploads one client may make to the upload cache per minute (then 429)"))
    upload_mb_per_minute: float = field(default=128.0, metadata=setting(
        type=float, help="megabytes one client may upload to the upload cache per minute (then 429)"))
    upload_cache_mb: float = field(default=2048.0, metadata=setting(
        type=float, help="total size of the upload cache (uploads are kept up to an hour; then 507)"))
    api_key: str | None = field(default=None, metadata=setting(
        env="COSYVOICE_API_KEY", help="require 'Authorization: Bearer KEY' on the /v1 API. Safer: the environment "
                                      "variable or --api-key-file"))
    api_key_file: Path | None = field(default=None, metadata=setting(
        type=Path, help="a file holding the API key (first line; chmod 600)"))
    allow_origin: tuple[str, ...] = field(default=(), metadata=setting(
        action="append", metavar="ORIGIN", help="a web page origin (https://host[:port]) allowed to call this server "
                                                "from a browser (CORS); repeat for several. Other sites' pages are "
                                                "refused (403)"))
    cache_dir: Path | None = field(default=None, metadata=setting(
        type=Path, help="Gradio's upload/cache folder, swept hourly; none: .run/gradio-<port>"))
    otlp_endpoint: str | None = field(default=None, metadata=setting(
        env="OTEL_EXPORTER_OTLP_ENDPOINT", help="send OpenTelemetry traces to this OTLP/HTTP collector"))
    otel_service_name: str = field(default="cosyvoice-studio", metadata=setting(
        env="OTEL_SERVICE_NAME", help="the service.name traces carry"))
    instance_name: str | None = field(default=None, metadata=setting(
        env="COSYVOICE_INSTANCE", help="what the X-Instance header says; none: host:port"))
    fault: str | None = field(default=None, metadata=setting(
        env="COSYVOICE_FAULT", help="testing only: fail-synthesis or fail-requests, to rehearse a broken canary"))
    warmup_delay_s: float = field(default=0.0, metadata=setting(
        "--test-warmup-delay-s", type=float, env="COSYVOICE_TEST_WARMUP_DELAY_S",
        help="testing only: hold the warm-up back so /ready says 503 first"))


@dataclass(frozen=True)
class JobsConfig:
    """Durable long-form/batch jobs (cosyvoice.jobs): where they are stored and how this instance works."""
    jobs_db: str | None = field(default=None, metadata=setting(
        env="COSYVOICE_JOBS_DB", help="job database URL: sqlite:///path.db (none: <jobs dir>/jobs.db) or "
                                      "postgresql://user:pass@host/db for several instances"))
    jobs_dir: Path | None = field(default=None, metadata=setting(
        type=Path, help="where job line files live (none: <outputs dir>/jobs; a shared volume for many instances)"))
    job_workers: int | None = field(default=None, metadata=setting(
        type=int, help="job lines voiced at once by this instance (none: concurrency - 1, at least 1; "
                       "0: take jobs, voice none)"))
    job_lease_seconds: float = field(default=30.0, metadata=setting(
        type=float, help="how long a line stays with a worker that stops renewing it (a dead instance)"))


@dataclass(frozen=True)
class Settings:
    """The configs of one start, and warnings about how secrets were given (to log)."""
    engine: EngineConfig
    service: ServiceConfig
    server: ServerConfig
    jobs: JobsConfig = JobsConfig()
    warnings: tuple[str, ...] = ()


def _default_text(f: Field) -> str:
    default = f.default if f.default is not MISSING else None
    return "none" if default in (None, ()) else str(default)


def add_flags(parser: argparse.ArgumentParser, *configs: type) -> argparse.ArgumentParser:
    """Declare the flags of the given config classes on `parser`; help names each default and variable.

    Absent flags stay out of the Namespace (SUPPRESS), so `configs_from` can tell "not given" (then
    the environment, then the default) from "given"."""
    for config in configs:
        for f in fields(config):
            meta = _setting(f)
            if meta is None:
                continue
            facts = ([f"env: {meta['env']}"] if meta["env"] else []) + [f"default: {_default_text(f)}"]
            help_text = f"{meta['help']} ({'; '.join(facts)})"
            kw = dict(meta["kw"])
            if kw.get("action") not in ("store_true", "store_false") and "choices" not in kw:
                kw.setdefault("metavar", flag_of(f)[2:].replace("-", "_").upper())
            parser.add_argument(flag_of(f), dest=f.name, default=argparse.SUPPRESS,
                                help=help_text.replace("%", "%%"), **kw)
    return parser


def _from_env(f: Field, env: str, raw: str) -> Any:
    """A variable's text as the field's type; a clear StartupError when it is not one."""
    kind = (_setting(f) or {}).get("kw", {}).get("type", str)
    try:
        return kind(raw)
    except ValueError:
        raise StartupError(f"{env}={raw!r} is not a valid {kind.__name__}; fix or unset it") from None


def build(config: type, args: argparse.Namespace, environ: Mapping[str, str] | None = None):
    """One config from parsed flags: a given flag, else its environment variable (`environ`, default
    this process's), else the default."""
    environ = os.environ if environ is None else environ
    values = {}
    for f in fields(config):
        meta = _setting(f)
        if meta is None:
            continue
        if f.name in args:
            value = getattr(args, f.name)
            values[f.name] = tuple(value) if isinstance(value, list) else value
        elif meta["env"] and environ.get(meta["env"]):
            values[f.name] = _from_env(f, meta["env"], environ[meta["env"]])
    return config(**values)


def read_secret(flag_value: str | None, path: Path | None, name: str, env: str,
                environ: Mapping[str, str]) -> tuple[str | None, list[str]]:
    """The --auth / --api-key value from its flag, its file or the environment, and warnings about how it
    was given. Giving both the flag and the file is refused: which one wins would be a guess."""
    flag = "--" + name.replace("_", "-")
    if flag_value and path:
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
    if flag_value:
        return flag_value, [f"{flag} on the command line can be read by every user of this machine (ps, /proc) "
                            f"and stays in shell history; prefer {env} in the environment or {flag}-file."]
    return environ.get(env) or None, []


def server_config(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[ServerConfig, list[str]]:
    """ServerConfig with --auth/--api-key read from their flag, file or variable; the warnings to log."""
    config = build(ServerConfig, args, {k: v for k, v in environ.items()
                                        if k not in ("COSYVOICE_AUTH", "COSYVOICE_API_KEY")})
    auth, auth_warnings = read_secret(getattr(args, "auth", None), config.auth_file, "auth", "COSYVOICE_AUTH", environ)
    key, key_warnings = read_secret(getattr(args, "api_key", None), config.api_key_file, "api_key",
                                    "COSYVOICE_API_KEY", environ)
    return replace(config, auth=auth, api_key=key), auth_warnings + key_warnings


def server_parser() -> argparse.ArgumentParser:
    """The web server's parser: `python app.py --help` (every flag with its default and variable)."""
    parser = argparse.ArgumentParser(description="CosyVoice Studio WebUI")
    return add_flags(parser, ServerConfig, EngineConfig, ServiceConfig, JobsConfig)


def log_target(args: argparse.Namespace) -> tuple[Path, str]:
    """The log folder and format, needed before anything else can fail and be logged."""
    defaults = ServerConfig()
    return getattr(args, "log_dir", defaults.log_dir), getattr(args, "log_format", defaults.log_format)


def settings_from(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
    """The server's three configs from its parsed flags and the environment (default: this process's);
    StartupError when a secret file or a variable is unusable."""
    environ = os.environ if environ is None else environ
    server, warnings = server_config(args, environ)
    return Settings(engine=build(EngineConfig, args, environ), service=build(ServiceConfig, args, environ),
                    server=server, jobs=build(JobsConfig, args, environ), warnings=tuple(warnings))


def configs_from(argv: Iterable[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Parse a command line and read the environment in one step."""
    return settings_from(server_parser().parse_args(None if argv is None else list(argv)), environ)


# ---- the rest of the process environment, read or written here only -------------------------------
def kernel_cache_dir() -> Path:
    """Where compiled CPU kernels are kept: $XDG_CACHE_HOME (or ~/.cache)/cosyvoice-studio/kernels."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cosyvoice-studio" / "kernels"


def compiler() -> str | None:
    """The C++ compiler to build kernels with: $CXX, else c++; None when not installed."""
    return shutil.which(os.environ.get("CXX", "c++"))


def env_value(name: str, default: str | None = None) -> str | None:
    """One variable of this process's environment (for settings that belong to a library, e.g. MKL)."""
    return os.environ.get(name, default)


def child_env(**overrides: str) -> dict[str, str]:
    """This process's environment with `overrides`, for a child process."""
    return {**os.environ, **overrides}


def apply_process_env(*, gradio_temp_dir: Path | None = None, path_prepend: Path | None = None) -> None:
    """Set what Gradio and its ffmpeg child read from the environment: the upload/cache folder and PATH."""
    if gradio_temp_dir is not None:
        os.environ["GRADIO_TEMP_DIR"] = str(gradio_temp_dir)
    if path_prepend is not None:
        os.environ["PATH"] = f"{path_prepend}{os.pathsep}{os.environ.get('PATH', '')}"
