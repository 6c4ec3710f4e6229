"""The runtime log a user tails: logs/runtime.log and stdout, one leveled line per request stage.

Every line carries a short request id (`req=7f3a`, or `req=-` outside a request) so that
`tail -f logs/runtime.log | grep req=7f3a` follows one request from received to SUCCESS.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from loguru import logger

LINE_FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <7} | req={extra[req]} | {message}"

_configured_file: Path | None = None


def setup_logging(log_dir: str | Path = "logs", level: str = "INFO", *, rotation: str = "20 MB",
                  retention: int = 10, stdout: bool = True) -> Path:
    """Send our log to `<log_dir>/runtime.log` (rotated by size, `retention` old files kept) and stdout."""
    global _configured_file
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / "runtime.log"
    logger.remove()
    logger.configure(extra={"req": "-"})
    if stdout:
        logger.add(sys.stdout, format=LINE_FORMAT, level=level, colorize=False, enqueue=False)
    logger.add(path, format=LINE_FORMAT, level=level, rotation=rotation, retention=retention,
               encoding="utf-8", enqueue=True)
    _keep_third_party_quiet()
    _configured_file = path
    return path


def _keep_third_party_quiet() -> None:
    # Libraries (gradio, httpx, uvicorn, onnxruntime) must not flood the runtime log or change the
    # root level; their own warnings still reach stderr through the standard logging module.
    logging.getLogger().setLevel(logging.WARNING)
    for name in ("httpx", "httpcore", "gradio", "uvicorn.access", "urllib3", "asyncio", "matplotlib"):
        logging.getLogger(name).setLevel(logging.WARNING)


def request_logger(request_id: str):
    """A logger bound to one request: every line it writes is tagged `req=<id>`."""
    return logger.bind(req=request_id)


def flush() -> None:
    """Wait until queued file writes are on disk (tests read the file right after a request)."""
    logger.complete()
