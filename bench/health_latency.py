"""How fast does /health answer while the app is synthesising, compared with when it is idle?

    .venv/bin/python bench/health_latency.py [--engine lite] [--probes 50]

Starts the real app on a free port, measures /health latency idle (the baseline), then again
while two long synthesis requests run, and prints both with their ratio as JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT, start_app, stop_app  # noqa: E402


def probe(url: str, n: int) -> list[float]:
    timings = []
    # One client: a fresh httpx client per call spends ~60 ms building its TLS context, not waiting on us.
    with httpx.Client(timeout=10) as client:
        for _ in range(n):
            started = time.perf_counter()
            client.get(f"{url}/health").raise_for_status()
            timings.append((time.perf_counter() - started) * 1000)
            time.sleep(0.05)
    return timings


def summary(ms: list[float]) -> dict:
    ms = sorted(ms)
    return {"n": len(ms), "median_ms": round(statistics.median(ms), 2),
            "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 2), "max_ms": round(ms[-1], 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--engine", default="lite")
    parser.add_argument("--probes", type=int, default=50)
    args = parser.parse_args()
    from gradio_client import Client, handle_file

    with tempfile.TemporaryDirectory() as tmp:
        app = start_app(Path(tmp), "--engine", args.engine)
        try:
            probe(app.url, 5)
            idle = probe(app.url, args.probes)
            text = "今天天气很好，我们一起去公园散步吧。" * 8

            def request():
                Client(app.url, verbose=False).predict(
                    text=text, mode="zero_shot", prompt_wav=handle_file(str(ZERO_SHOT_PROMPT)),
                    prompt_text=ZERO_SHOT_TRANSCRIPT, instruct_text="", seed=1, speed=1.0, stream=False,
                    api_name="/synthesize")

            workers = [threading.Thread(target=request) for _ in range(2)]
            for worker in workers:
                worker.start()
            time.sleep(2.0)
            busy = probe(app.url, args.probes)
            for worker in workers:
                worker.join()
        finally:
            stop_app(app)
    result = {"idle": summary(idle), "busy": summary(busy),
              "busy_over_idle_median": round(statistics.median(busy) / statistics.median(idle), 2)}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
