"""Load and soak on loopback: concurrent clients mixing valid and bad requests, then a long sequential run.

    .venv/bin/python bench/load.py [--clients 20] [--requests 60] [--soak 200] [--json out.json]

Starts its own app (lite engine, --concurrency 2 --queue-size 8, temporary folders) on a free
loopback port unless --url is given, and stops it at the end. Every loop is bounded in count and
time. It checks what a user would: each valid request is either served with exactly one complete
WAV in outputs/ or told "busy" in the service's own words; each bad request gets a clear refusal;
/health keeps answering. The soak reports RSS, open fds and the size of Gradio's cache folder.
"""
from __future__ import annotations

import argparse
import json
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PROMPT = ROOT.parent / "shared" / "audio" / "zero_shot_prompt.wav"
TRANSCRIPT = "希望你以后能够做的比我还好呦。"
BUSY = "The server is busy"
TEXTS = ["你好。", "今天天气很好。", "我们明天一起去公园散步吧。", "Hello there, nice to meet you."]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Target:
    def __init__(self, url: str, outputs: Path | None, cache: Path | None, pid: int | None):
        self.url, self.outputs, self.cache, self.pid = url, outputs, cache, pid
        self.http = httpx.Client(timeout=180)

    def upload(self) -> dict:
        with open(PROMPT, "rb") as handle:
            path = self.http.post(f"{self.url}/gradio_api/upload", files={"files": (PROMPT.name, handle)}).json()[0]
        return {"path": path, "meta": {"_type": "gradio.FileData"}}

    def call(self, data: list) -> tuple[str, str]:
        """(outcome, detail): outcome is complete, error or http<status>."""
        response = self.http.post(f"{self.url}/gradio_api/call/synthesize", json={"data": data})
        if response.status_code != 200:
            return f"http{response.status_code}", response.text
        event_id = response.json()["event_id"]
        text = self.http.get(f"{self.url}/gradio_api/call/synthesize/{event_id}").text
        for block in text.split("\n\n"):
            if block.startswith("event: complete"):
                return "complete", block.split("data: ", 1)[1]
            if block.startswith("event: error"):
                return "error", block.split("data: ", 1)[1]
        return "unknown", text[-300:]


def request_kinds(target: Target, prompt: dict) -> dict[str, tuple[list, str]]:
    """name -> (data, what must be answered)."""
    def data(**kw):
        fields = {"text": random.choice(TEXTS), "mode": "zero_shot", "prompt": prompt, "prompt_text": TRANSCRIPT,
                  "instruct": "", "seed": random.randrange(1000), "speed": 1.0, "stream": False, "normalize": True,
                  "voice": ""}
        return list((fields | kw).values())
    return {
        "valid": (data(), "served or busy"),
        "bad_speed": (data(speed="fast"), "speed must be a number"),
        "empty_text": (data(text="   "), "text is empty"),
        "server_path": (data(prompt={"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}),
                        "must be a file uploaded"),
    }


def run_load(target: Target, clients: int, requests: int, deadline_s: float) -> dict:
    prompt = target.upload()
    kinds = list(request_kinds(target, prompt))
    plan = ["valid" if i % 5 < 3 else kinds[1 + i % 3] for i in range(requests)]   # 60 % valid
    random.Random(0).shuffle(plan)
    lock = threading.Lock()
    results: list[dict] = []
    started = time.monotonic()

    def client(worker: int) -> None:
        while time.monotonic() - started < deadline_s:
            with lock:
                if not plan:
                    return
                kind = plan.pop()
            data, expected = request_kinds(target, prompt)[kind]
            t0 = time.perf_counter()
            outcome, detail = target.call(data)
            elapsed = time.perf_counter() - t0
            ok = False
            if kind == "valid":
                if outcome == "complete":
                    path = Path(json.loads(detail)[0]["path"])
                    ok = path.exists() and sf.info(str(path)).frames > 0
                else:
                    ok = BUSY in detail
            else:
                ok = expected in detail and "Traceback" not in detail
            with lock:
                results.append({"kind": kind, "outcome": outcome, "ok": ok, "seconds": elapsed,
                                "served": kind == "valid" and outcome == "complete", "detail": detail[:200]})

    health: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                target.http.get(f"{target.url}/health", timeout=5)
                health.append(time.perf_counter() - t0)
            except httpx.HTTPError:
                health.append(float("inf"))
            stop.wait(0.5)

    before = len(list(target.outputs.glob("output_*.wav"))) if target.outputs else None
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    prober = threading.Thread(target=probe)
    prober.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    prober.join()
    served = [r for r in results if r["served"]]
    latencies = sorted(r["seconds"] for r in served)
    wavs = len(list(target.outputs.glob("output_*.wav"))) - before if target.outputs else None
    return {
        "clients": clients, "requests": len(results), "wall_s": round(time.monotonic() - started, 1),
        "served": len(served), "busy": sum(1 for r in results if r["kind"] == "valid" and not r["served"]),
        "bad_refused_clearly": sum(1 for r in results if r["kind"] != "valid" and r["ok"]),
        "bad_sent": sum(1 for r in results if r["kind"] != "valid"),
        "unexpected": [r for r in results if not r["ok"]][:5],
        "wavs_written": wavs,
        "served_p50_s": round(statistics.median(latencies), 2) if latencies else None,
        "served_p95_s": round(latencies[max(0, int(0.95 * len(latencies)) - 1)], 2) if latencies else None,
        "health_max_s": round(max(health), 3) if health else None,
    }


def sample(target: Target) -> dict:
    import psutil

    from cosyvoice.http_guard import upload_folder_size

    process = psutil.Process(target.pid)
    return {"rss_mb": round(process.memory_info().rss / 2**20, 1), "fds": process.num_fds(),
            "cache_mb": round(upload_folder_size(target.cache) / 2**20, 2) if target.cache else None}


def run_soak(target: Target, count: int, deadline_s: float) -> dict:
    prompt = target.upload()
    samples = [{"after": 0, **sample(target)}]
    started = time.monotonic()
    done = 0
    for index in range(1, count + 1):
        if time.monotonic() - started > deadline_s:
            break
        data, _ = request_kinds(target, prompt)["valid"]
        outcome, detail = target.call(data)
        if outcome != "complete":
            raise SystemExit(f"soak request {index} was not served: {detail}")
        done = index
        if index % 50 == 0:
            samples.append({"after": index, **sample(target)})
    return {"requests": done, "wall_s": round(time.monotonic() - started, 1), "samples": samples}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="an app that is already running (default: start one)")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--soak", type=int, default=200, help="sequential requests for the soak (0: none)")
    parser.add_argument("--deadline", type=float, default=900, help="seconds each phase may take at most")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    app = None
    if args.url:
        target = Target(args.url.rstrip("/"), None, None, None)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="cosyvoice-load-"))
        port = free_port()
        cache = tmp / "cache"
        app = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--engine", "lite", "--port", str(port),
                                "--concurrency", "2", "--queue-size", "8", "--log-dir", str(tmp / "logs"),
                                "--outputs-dir", str(tmp / "outputs"), "--cache-dir", str(cache)],
                               cwd=ROOT, stdout=open(tmp / "app.out", "wb"), stderr=subprocess.STDOUT)
        target = Target(f"http://127.0.0.1:{port}", tmp / "outputs", cache, app.pid)
        for _ in range(600):
            try:
                if target.http.get(f"{target.url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise SystemExit(f"the app did not become ready; see {tmp / 'app.out'}")
    try:
        report = {"load": run_load(target, args.clients, args.requests, args.deadline)}
        print(json.dumps(report["load"], indent=2, ensure_ascii=False))
        if args.soak and target.pid:
            report["soak"] = run_soak(target, args.soak, args.deadline)
            print(json.dumps(report["soak"], indent=2))
    finally:
        if app is not None:
            app.terminate()
            app.wait(timeout=60)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    load = report["load"]
    return 0 if not load["unexpected"] and load["wavs_written"] in (None, load["served"]) else 1


if __name__ == "__main__":
    sys.exit(main())
