"""Load and soak on loopback: concurrent clients mixing valid and bad requests, then a long sequential run.

    .venv/bin/python bench/load.py [--clients 20] [--requests 60] [--soak 200] [--json out.json]
    .venv/bin/python bench/load.py --mixed [--clients 30] [--requests 300] [--json out.json]

--mixed sends the /v1 API a mix from 30 clients: speech (whole and streamed), voices list, create
and delete, and bad requests (a seed out of range, an unknown model, bad markup, broken JSON). Every
served speech request must have exactly one complete output file (found by its unique request id,
frames equal to the response's), every refusal the service's OpenAI-shaped message naming the
request id, and /health keeps answering.

Starts its own app (lite engine at its default width of 2, --queue-size 8, temporary folders) on a free
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

    before = len(list(target.outputs.glob("output_*.wav"))) if target.outputs else None
    health = _with_health_probe(target, lambda: _run_clients(client, clients))
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


MIXED_BAD = {
    "seed": ({"seed": 10**400}, 400), "model": ({"model": "whisper-1"}, 400),
    "markup": ({"input": "你好[pause:99]"}, 400), "json": (None, 400),
}


def mixed_call(target: Target, kind: str, rid: str, voice_ids: list) -> dict:
    """One /v1 request of `kind`; returns what the checks need."""
    import uuid

    headers = {"X-Request-ID": rid}
    body = {"model": "tts-1", "voice": "narrator", "input": random.choice(TEXTS[:3]), "response_format": "wav"}
    if kind in ("speech", "stream"):
        return {"response": target.http.post(f"{target.url}/v1/audio/speech", headers=headers,
                                              json={**body, "stream": kind == "stream"})}
    if kind == "list":
        return {"response": target.http.get(f"{target.url}/v1/audio/voices", headers=headers)}
    if kind == "create":
        with open(PROMPT, "rb") as audio:
            response = target.http.post(f"{target.url}/v1/audio/voices", headers=headers,
                                        data={"name": f"load-{uuid.uuid4().hex[:8]}", "transcript": TRANSCRIPT},
                                        files={"audio": ("prompt.wav", audio, "audio/wav")})
        if response.status_code == 201:
            voice_ids.append(response.json()["id"])
        return {"response": response}
    if kind == "delete":
        voice_id = voice_ids.pop() if voice_ids else "voice_000000000000"
        return {"response": target.http.delete(f"{target.url}/v1/audio/voices/{voice_id}", headers=headers)}
    extra, _ = MIXED_BAD[kind]
    if extra is None:
        return {"response": target.http.post(f"{target.url}/v1/audio/speech", headers={
            **headers, "Content-Type": "application/json"}, content=b'{"model": "tts-1", "input": ')}
    payload = json.dumps({**body, **extra}) if kind != "seed" else \
        json.dumps(body)[:-1] + ', "seed": 1' + "0" * 400 + "}"
    return {"response": target.http.post(f"{target.url}/v1/audio/speech", headers={
        **headers, "Content-Type": "application/json"}, content=payload.encode())}


def mixed_check(target: Target, kind: str, rid: str, response: httpx.Response) -> tuple[bool, bool]:
    """(ok, served): a served speech has exactly one complete file; a refusal is the service's message."""
    import io

    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            return False, False
        expected = MIXED_BAD.get(kind, (None, None))[1]
        known = f"(request {rid})" in message and "Traceback" not in message
        busy = response.status_code == 429 and BUSY in message
        gone = kind == "delete" and response.status_code == 404
        return known and (busy or gone or response.status_code == expected), False
    if kind not in ("speech", "stream"):
        return response.status_code in (200, 201), False
    files = list(target.outputs.glob(f"output_*_{rid}.wav")) if target.outputs else []
    if target.outputs is None:
        return True, True
    complete = len(files) == 1 and sf.info(str(files[0])).frames == sf.info(io.BytesIO(response.content)).frames \
        if kind == "speech" else len(files) == 1 and sf.info(str(files[0])).frames > 0
    return complete, True


def run_mixed(target: Target, clients: int, requests: int, deadline_s: float) -> dict:
    with open(PROMPT, "rb") as audio:
        target.http.post(f"{target.url}/v1/audio/voices", data={"name": "narrator", "transcript": TRANSCRIPT},
                         files={"audio": ("prompt.wav", audio, "audio/wav")})
    kinds = ["speech"] * 4 + ["stream"] * 2 + ["list", "create", "delete"] + list(MIXED_BAD)
    plan = [kinds[i % len(kinds)] for i in range(requests)]
    random.Random(1).shuffle(plan)
    lock, results, voice_ids, started = threading.Lock(), [], [], time.monotonic()

    def client(worker: int) -> None:
        while time.monotonic() - started < deadline_s:
            with lock:
                if not plan:
                    return
                kind, rid = plan.pop(), f"mix{worker:02d}-{len(plan):04d}"
            t0 = time.perf_counter()
            response = mixed_call(target, kind, rid, voice_ids)["response"]
            elapsed = time.perf_counter() - t0
            ok, served = mixed_check(target, kind, rid, response)
            with lock:
                results.append({"kind": kind, "status": response.status_code, "ok": ok, "served": served,
                                "seconds": elapsed, "rid": rid, "detail": response.text[:200] if not ok else ""})

    health = _with_health_probe(target, lambda: _run_clients(client, clients))
    served = sorted(r["seconds"] for r in results if r["served"])
    by_status: dict[str, int] = {}
    for r in results:
        key = f"{r['kind']} {r['status']}"
        by_status[key] = by_status.get(key, 0) + 1
    return {"clients": clients, "requests": len(results), "wall_s": round(time.monotonic() - started, 1),
            "served_speech": len(served), "outcomes": dict(sorted(by_status.items())),
            "unexpected": [r for r in results if not r["ok"]][:5], "unexpected_count": sum(not r["ok"] for r in results),
            "served_p50_s": _quantile(served, 0.5), "served_p95_s": _quantile(served, 0.95),
            "health_p50_s": _quantile(sorted(health), 0.5, 3), "health_max_s": round(max(health), 3) if health else None}


def _run_clients(client, clients: int) -> None:
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _with_health_probe(target: Target, work) -> list[float]:
    health: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                httpx.get(f"{target.url}/health", timeout=5)
                health.append(time.perf_counter() - t0)
            except httpx.HTTPError:
                health.append(float("inf"))
            stop.wait(0.5)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        work()
    finally:
        stop.set()
        prober.join()
    return health


def _quantile(ordered: list[float], q: float, digits: int = 2) -> float | None:
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], digits) if ordered else None


def sample(target: Target) -> dict:
    import psutil

    from cosyvoice.server.http_guard import upload_folder_size

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
    parser.add_argument("--mixed", action="store_true", help="the /v1 mixed run (default 30 clients, 300 requests)")
    args = parser.parse_args()
    if args.mixed:
        args.clients = 30 if args.clients == 20 else args.clients
        args.requests = 300 if args.requests == 60 else args.requests

    app = None
    if args.url:
        target = Target(args.url.rstrip("/"), None, None, None)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="cosyvoice-load-"))
        port = free_port()
        cache = tmp / "cache"
        app = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--engine", "lite", "--port", str(port),
                                "--queue-size", "8", "--log-dir", str(tmp / "logs"), "--voices-dir", str(tmp / "voices"),
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
        if args.mixed:
            report = {"mixed": run_mixed(target, args.clients, args.requests, args.deadline)}
            print(json.dumps(report["mixed"], indent=2, ensure_ascii=False))
            if args.json:
                args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False))
            return 0 if report["mixed"]["unexpected_count"] == 0 else 1
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
