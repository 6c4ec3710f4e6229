"""A node death behind the shipped nginx is invisible to API clients while a healthy instance remains.

Two stable lite instances behind Debian nginx (rendered by deploy/nginx/render.sh, keep-alive to the
instances on), four clients each sending /v1/audio/speech POSTs one after another; one instance is
killed with SIGKILL in the middle of the stream. Every request must come back 200 with a complete WAV:
the ones refused by (or reset on) the dead process are re-sent by nginx to the live one, and the dead one
leaves the group after its first refusals. The access log shows the retries really happened."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import threading
import time

import httpx
import pytest
import soundfile as sf

from conftest import PYTHON, ROOT, ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT, free_port, wait_for_health
from test_deploy_nginx import NGINX, Instance, Nginx

pytestmark = [pytest.mark.slow, pytest.mark.deploy]

CLIENTS = 4
TEXT = "你好，今天天气不错。"


def start_instance(tmp, name: str, voices) -> Instance:
    """A lite instance on its own port and logs; the pair shares one voices folder, as a deployment does."""
    port, tmp = free_port(), tmp / name
    tmp.mkdir(parents=True)
    proc = subprocess.Popen([PYTHON, str(ROOT / "app.py"), "--engine", "lite", "--port", str(port), "--host",
                             "127.0.0.1", "--log-dir", str(tmp / "logs"), "--outputs-dir", str(tmp / "outputs"),
                             "--voices-dir", str(voices)], cwd=ROOT, env={**os.environ, "COSYVOICE_INSTANCE": name},
                            stdout=open(tmp / "out.log", "ab"), stderr=subprocess.STDOUT)
    return Instance(name, port, proc, tmp, monitored=False)


def create_narrator(port: int) -> None:
    with open(ZERO_SHOT_PROMPT, "rb") as audio:
        response = httpx.post(f"http://127.0.0.1:{port}/v1/audio/voices", timeout=120,
                              data={"name": "narrator", "consent": "self", "transcript": ZERO_SHOT_TRANSCRIPT},
                              files={"audio_sample": ("prompt.wav", audio, "audio/wav")})
    assert response.status_code in (200, 201), response.text


class Stream:
    """CLIENTS threads, each POSTing speech requests back to back until stopped."""

    def __init__(self, url: str):
        self.url, self.stop = url, threading.Event()
        self.results: list[tuple[float, int, str, str]] = []   # (sent at, status, instance, problem)
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.client, args=(k,), daemon=True) for k in range(CLIENTS)]

    def client(self, k: int) -> None:
        with httpx.Client(timeout=60) as http:      # each client keeps its own connection to nginx
            n = 0
            while not self.stop.is_set():
                n += 1
                sent = time.monotonic()
                status, instance, problem = 0, "", ""
                try:
                    response = http.post(f"{self.url}/v1/audio/speech", headers={"X-Request-ID": f"c{k}-{n}"},
                                         json={"model": "tts-1", "voice": "narrator", "input": TEXT,
                                               "response_format": "wav"})
                    status, instance = response.status_code, response.headers.get("x-instance", "")
                    if status != 200:
                        problem = response.text[:200]
                    else:
                        audio, rate = sf.read(io.BytesIO(response.content))
                        if len(audio) < rate * 0.3:
                            problem = f"only {len(audio)} samples"
                except (httpx.HTTPError, RuntimeError, ValueError) as err:
                    problem = f"{type(err).__name__}: {err}"
                with self.lock:
                    self.results.append((sent, status, instance, problem))

    def served_since(self, since: float) -> list[tuple[float, int, str, str]]:
        with self.lock:
            return [r for r in self.results if r[0] >= since]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    assert os.path.exists(NGINX), "Debian nginx is required: .ci/install-deploy-deps.sh"
    tmp = tmp_path_factory.mktemp("failover")
    instances = [start_instance(tmp, f"stable-{i}", tmp / "voices") for i in range(2)]
    nginx = Nginx(tmp / "nginx", free_port())
    try:
        for inst in instances:
            wait_for_health(inst.port, 240)
        create_narrator(instances[0].port)
        nginx.render(instances, [])
        nginx.start()
        yield instances, nginx
    finally:
        nginx.stop()
        for inst in instances:
            if inst.proc.poll() is None:
                inst.stop()


def test_kill_9_of_one_of_two_instances_under_a_steady_stream_gives_no_client_a_failure(pair):
    (survivor, victim), nginx = pair
    stream = Stream(nginx.url)
    for thread in stream.threads:
        thread.start()
    try:
        deadline = time.monotonic() + 60
        while {r[2] for r in stream.served_since(0) if r[1] == 200} != {"stable-0", "stable-1"}:
            assert time.monotonic() < deadline, f"traffic never reached both instances: {stream.results[-8:]}"
            time.sleep(0.2)
        time.sleep(1.0)                 # both instances busy, connections to both kept alive by nginx
        killed_at = time.monotonic()
        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait(timeout=10)
        time.sleep(6.0)
    finally:
        stream.stop.set()
        for thread in stream.threads:
            thread.join(timeout=90)

    failures = [r for r in stream.results if r[3]]
    assert failures == [], f"{len(failures)} of {len(stream.results)} requests failed: {failures[:5]}"
    after = stream.served_since(killed_at + 0.5)
    assert len(after) >= CLIENTS * 3 and {r[2] for r in after} == {"stable-0"}, after
    # nginx saw the dead instance refuse (or drop) requests and sent each of them on: a retry, not luck.
    entries = nginx.access_log(until=lambda log: len([e for e in log if e["uri"] == "/v1/audio/speech"])
                               >= len(stream.results))
    retried = [e for e in entries if e["uri"] == "/v1/audio/speech" and "," in e["upstream"]]
    assert retried, "no request was retried; the kill went unnoticed?"
    for entry in retried:
        assert entry["status"] == 200 and entry["upstream"].split(",")[0].strip() == victim.addr, entry
        assert entry["upstream"].split(",")[-1].strip() == survivor.addr, entry
    # Taken out at once: after its max_fails refusals the dead instance is not tried again within fail_timeout.
    tries_on_dead = sum(e["upstream"].count(victim.addr) for e in entries
                        if e["uri"] == "/v1/audio/speech" and "," in e["upstream"])
    assert tries_on_dead <= 2 * 2 + CLIENTS, retried       # MAX_FAILS per worker (1 worker) + the in-flight ones
