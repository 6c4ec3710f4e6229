"""Prometheus metrics for /metrics: what an operator graphs and alerts on."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter("cosyvoice_requests_total", "Synthesis requests by mode and outcome",
                   ["mode", "outcome"], registry=REGISTRY)      # outcome: ok, refused, busy, error, cancelled
AUDIO_SECONDS = Counter("cosyvoice_audio_seconds_total", "Seconds of audio synthesised", registry=REGISTRY)
RTF = Histogram("cosyvoice_rtf", "Real-time factor of finished requests (synthesis time / audio time)",
                buckets=(0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1, 1.5, 2, 5, 10, 30), registry=REGISTRY)
BUSY_WORKERS = Gauge("cosyvoice_busy_workers", "Requests being synthesised now", registry=REGISTRY)
QUEUE_DEPTH = Gauge("cosyvoice_queue_depth", "Requests waiting for a worker", registry=REGISTRY)
QUEUE_DEPTH_BY_KIND = Gauge("cosyvoice_queue_depth_by_kind", "Requests waiting for a worker on this instance, by "
                            "kind: interactive, or job (a batch job's line)", ["kind"], registry=REGISTRY)
BUILD_INFO = Gauge("cosyvoice_build_info", "Always 1; the labels say which build serves on this instance "
                   "(dashboards and canary alerts join on them)",
                   ["version", "commit", "engine", "model", "instance"], registry=REGISTRY)


def set_build_info(version: str, commit: str | None, engine: str, model: str, instance: str) -> None:
    BUILD_INFO.clear()      # one series per process, even if called twice
    BUILD_INFO.labels(version=version, commit=(commit or "unknown")[:12], engine=engine, model=model,
                      instance=instance).set(1)

START_TIME = Gauge("cosyvoice_start_time_seconds", "Unix time this process started (restarts show as changes)",
                   registry=REGISTRY)
START_TIME.set_to_current_time()

SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
REQUEST_DURATION = Histogram("cosyvoice_request_duration_seconds",
                             "Time from a request being received to its result being saved", ["mode"],
                             buckets=SECONDS_BUCKETS, registry=REGISTRY)
TIME_TO_FIRST_AUDIO = Histogram("cosyvoice_time_to_first_audio_seconds",
                                "Time from a request being received to its first audio chunk",
                                buckets=SECONDS_BUCKETS, registry=REGISTRY)
STAGE_DURATION = Histogram("cosyvoice_stage_duration_seconds", "Time spent in each stage of a request",
                           ["stage"], buckets=SECONDS_BUCKETS, registry=REGISTRY)
QUEUE_WAIT = Histogram("cosyvoice_queue_wait_seconds", "Time a request waited for a worker",
                       buckets=(0, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120), registry=REGISTRY)
VOICE_CACHE = Counter("cosyvoice_voice_cache_lookups_total", "Voice feature lookups by result", ["result"],
                      registry=REGISTRY)                      # result: hit, miss
GPU_MEMORY = Gauge("cosyvoice_gpu_memory_bytes", "CUDA memory held by this process", ["kind"],
                   registry=REGISTRY)                         # kind: allocated, reserved


def watch_gpu_memory() -> bool:
    """Report CUDA memory on /metrics when a GPU is in use; False where there is none."""
    try:
        import torch
    except ImportError:
        return False
    if not torch.cuda.is_available():
        return False
    GPU_MEMORY.labels("allocated").set_function(torch.cuda.memory_allocated)
    GPU_MEMORY.labels("reserved").set_function(torch.cuda.memory_reserved)
    return True


def _start_at_zero() -> None:
    """Every mode × outcome series exists from the first scrape, so rate() sees the first request."""
    from cosyvoice.modes import MODE_IDS

    for mode in MODE_IDS:
        for outcome in ("ok", "refused", "busy", "error", "cancelled"):
            REQUESTS.labels(mode, outcome)


_start_at_zero()
