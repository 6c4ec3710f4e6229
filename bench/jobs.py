"""Jobs benchmark: a long job on the lite engine while interactive requests continue.

    .venv/bin/python bench/jobs.py [--lines 2000] [--interactive 30] [--json out.json]

Starts its own app (lite engine, --concurrency 2, so one job worker and one slot kept for
interactive work; SQLite in a temporary folder) and a saved voice. It times `--interactive`
sequential /v1/audio/speech requests first on the idle server (the baseline, same run), then submits
a job of `--lines` lines and times the same requests while the job runs, then waits for the job.
Reports lines per minute, interactive p50/p95 with and without the job (and their ratio), the
server's peak RSS and the database size. Every wait is bounded.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.load import PROMPT, TRANSCRIPT, free_port  # noqa: E402

TEXTS = ["Hello there, nice to meet you.", "今天天气很好。", "The train leaves at nine."]


def start(tmp: Path, port: int) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "app.py"), "--engine", "lite", "--port", str(port), "--concurrency", "2",
           "--log-dir", str(tmp / "logs"), "--outputs-dir", str(tmp / "outputs"), "--voices-dir", str(tmp / "voices"),
           "--jobs-dir", str(tmp / "jobs")]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=open(tmp / "app.out", "wb"), stderr=subprocess.STDOUT)
    deadline = time.time() + 600           # a loaded box may take minutes to warm up
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("the app did not become ready:\n" + (tmp / "app.out").read_text(errors="replace")[-2000:])


def interactive(http: httpx.Client, url: str, count: int) -> list[float]:
    times = []
    for n in range(count):
        started = time.perf_counter()
        response = http.post(f"{url}/v1/audio/speech", json={"model": "tts-1", "voice": "narrator", "seed": n,
                                                             "input": TEXTS[n % len(TEXTS)], "response_format": "wav"})
        response.raise_for_status()
        times.append(time.perf_counter() - started)
    return times


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) >= 2 else values[0]


class RssWatch(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.process, self.peak, self.stop = psutil.Process(pid), 0, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.5):
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=2000)
    parser.add_argument("--interactive", type=int, default=30)
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    tmp, port = Path(tempfile.mkdtemp(prefix="bench-jobs-")), free_port()
    proc = start(tmp, port)
    url, http = f"http://127.0.0.1:{port}", httpx.Client(timeout=300)
    watch = RssWatch(proc.pid)
    watch.start()
    try:
        with open(PROMPT, "rb") as audio:
            http.post(f"{url}/v1/audio/voices", data={"name": "narrator", "transcript": TRANSCRIPT, "consent": "self"},
                      files={"audio_sample": ("prompt.wav", audio, "audio/wav")}).raise_for_status()
        idle = interactive(http, url, args.interactive)
        lines = [{"custom_id": str(n), "text": f"Sentence {n} of the chapter, as a narrator reads it."}
                 for n in range(args.lines)]
        job = http.post(f"{url}/v1/jobs", json={"lines": lines, "voice": "narrator", "seed": 1}).json()
        submitted = time.time()
        busy = interactive(http, url, args.interactive)
        deadline = submitted + args.timeout
        while True:
            view = http.get(f"{url}/v1/jobs/{job['id']}", params={"lines": "false"}).json()
            if view["state"] in ("done", "done_with_failures", "failed", "cancelled") or time.time() > deadline:
                break
            time.sleep(2)
        elapsed = time.time() - submitted
        size = sum(p.stat().st_size for p in (tmp / "jobs").glob("jobs.db*"))
    finally:
        watch.stop.set()
        proc.terminate()
        proc.wait(timeout=60)
    figures = {"lines": args.lines, "state": view["state"], "done": view["progress"]["done"],
               "lines_per_minute": round(view["progress"]["done"] / elapsed * 60, 1),
               "audio_seconds": view["audio_seconds"], "job_seconds": round(elapsed, 1),
               "interactive_p50_idle_s": round(statistics.median(idle), 3), "interactive_p95_idle_s": round(p95(idle), 3),
               "interactive_p50_job_s": round(statistics.median(busy), 3), "interactive_p95_job_s": round(p95(busy), 3),
               "p95_ratio_job_vs_idle": round(p95(busy) / p95(idle), 2),
               "peak_rss_mb": round(watch.peak / 2**20), "database_mb": round(size / 2**20, 2)}
    print(json.dumps(figures, indent=1))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0 if view["state"] == "done" else 1


if __name__ == "__main__":
    sys.exit(main())
