"""Several instances behind Debian nginx (deploy/nginx/): spread, canary split, forced channel, rollback,
failover after kill -9 and rejoin after the monitor restarts it, a failing canary drained, streaming.

Real processes on loopback: 3 lite instances (stable-0, stable-1 under ./monitor.sh, canary-0) and nginx
rendered by deploy/nginx/render.sh, driven with deploy/nginx/canary.sh. The tests share one cluster and run
in file order (the last ones change it: a faulty canary, a killed instance)."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest

from conftest import PYTHON, ROOT, ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT, free_port, wait_for_health

pytestmark = [pytest.mark.slow, pytest.mark.deploy]

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
DEPLOY = ROOT / "deploy" / "nginx"
MAX_FAILS = 2
FAIL_TIMEOUT_S = 8


class Instance:
    def __init__(self, name: str, port: int, proc: subprocess.Popen, tmp: Path, monitored: bool):
        self.name, self.port, self.proc, self.tmp, self.monitored = name, port, proc, tmp, monitored
        self.addr = f"127.0.0.1:{port}"

    def app_pid(self) -> int:
        """The app's own pid (under monitor.sh it is run.sh's, which execs the app)."""
        if self.monitored:
            return int((ROOT / ".run" / f"app-{self.port}.pid").read_text().strip())
        return self.proc.pid

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_instance(tmp: Path, name: str, *, monitored: bool = False, fault: str | None = None) -> Instance:
    port = free_port()
    tmp = tmp / name
    tmp.mkdir(parents=True)
    env = {**os.environ, "COSYVOICE_INSTANCE": name, "MONITOR_INTERVAL": "1"}
    env.pop("COSYVOICE_FAULT", None)
    if fault:
        env["COSYVOICE_FAULT"] = fault
    args = ["--engine", "lite", "--port", str(port), "--host", "127.0.0.1", "--log-dir", str(tmp / "logs"),
            "--outputs-dir", str(tmp / "outputs")]
    cmd = [str(ROOT / "monitor.sh"), *args] if monitored else [PYTHON, str(ROOT / "app.py"), *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(tmp / "out.log", "ab"), stderr=subprocess.STDOUT)
    return Instance(name, port, proc, tmp, monitored)


class Nginx:
    def __init__(self, conf_dir: Path, port: int):
        self.conf_dir, self.port, self.proc = conf_dir, port, None
        self.url = f"http://127.0.0.1:{port}"

    def render(self, stable: list[Instance], canary: list[Instance]) -> None:
        env = {**os.environ, "STABLE": " ".join(i.addr for i in stable), "CANARY": " ".join(i.addr for i in canary),
               "LISTEN": f"127.0.0.1:{self.port}", "WORKERS": "1", "MAX_FAILS": str(MAX_FAILS),
               "FAIL_TIMEOUT": f"{FAIL_TIMEOUT_S}s", "CANARY_WEIGHT": "0"}
        if os.geteuid() == 0:       # pytest's tmp dir is root-only: workers must not drop to nobody
            env["NGINX_USER"] = "root"
        subprocess.run([str(DEPLOY / "render.sh"), str(self.conf_dir)], env=env, check=True, capture_output=True)

    def start(self) -> None:
        self.proc = subprocess.Popen([NGINX, "-p", str(self.conf_dir), "-c", str(self.conf_dir / "nginx.conf"),
                                      "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                httpx.get(f"{self.url}/lb/weight", timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"nginx did not start: {self.proc.stderr.read().decode(errors='replace')}")

    def reload(self) -> None:
        subprocess.run([NGINX, "-p", str(self.conf_dir), "-c", str(self.conf_dir / "nginx.conf"), "-s", "reload"],
                       check=True, capture_output=True)
        time.sleep(1.0)     # old workers finish; new ones answer

    def canary(self, *args: str) -> str:
        out = subprocess.run([str(DEPLOY / "canary.sh"), "--conf-dir", str(self.conf_dir), *args],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def access_log(self, until=None, timeout: float = 5.0) -> list[dict]:
        """The JSON access log's complete lines. nginx writes a line just after the response went out,
        so `until(entries)` polls (up to `timeout`) for the lines a test needs."""
        path = self.conf_dir / "logs" / "access.json"
        deadline = time.monotonic() + timeout
        while True:
            entries = [json.loads(line) for line in path.read_text().split("\n")[:-1] if line.strip()]
            if until is None or until(entries) or time.monotonic() > deadline:
                return entries
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Job:
    def __init__(self):
        self.instances: list[str] = []     # X-Instance of every response of this job
        self.status: int | None = None
        self.error: str | None = None
        self.wav_bytes = 0

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def instance(self) -> str | None:
        return self.instances[-1] if self.instances else None


def synthesize_via_rest(base: str, text: str = "你好，世界。", headers: dict | None = None,
                        cookies: dict | None = None) -> Job:
    """One synthesis through Gradio's REST API (config, upload, call, event stream, result file), as a fresh client:
    its own cookie jar, so nginx gives it a new session key."""
    job = Job()

    def seen(response: httpx.Response) -> httpx.Response:
        job.status = response.status_code
        if response.headers.get("x-instance"):
            job.instances.append(response.headers["x-instance"])
        if response.status_code >= 400:
            raise RuntimeError(f"HTTP {response.status_code} from {response.request.url.path}: {response.text[:200]}")
        return response

    with httpx.Client(base_url=base, timeout=60, headers=headers or {}, cookies=cookies or {}) as client:
        try:
            seen(client.get("/config"))     # as gradio_client and the browser do: a GET opens the session
            with open(ZERO_SHOT_PROMPT, "rb") as wav:
                uploaded = seen(client.post("/gradio_api/upload", files={"files": wav})).json()[0]
            prompt = {"path": uploaded, "meta": {"_type": "gradio.FileData"}, "orig_name": "prompt.wav"}
            data = [text, "zero_shot", prompt, ZERO_SHOT_TRANSCRIPT, "", 0, 1.0, False, True, ""]
            event_id = seen(client.post("/gradio_api/call/synthesize", json={"data": data})).json()["event_id"]
            result = None
            with client.stream("GET", f"/gradio_api/call/synthesize/{event_id}") as stream:
                seen(stream)
                event = None
                for line in stream.iter_lines():
                    if line.startswith("event:"):
                        event = line.split(":", 1)[1].strip()
                    elif line.startswith("data:") and event in ("complete", "error"):
                        if event == "error":
                            raise RuntimeError(f"synthesis failed: {line}")
                        result = json.loads(line[5:])[0]
                        break
            assert result is not None, "event stream ended without a result"
            wav = seen(client.get(f"/gradio_api/file={result['path']}"))
            job.wav_bytes = len(wav.content)
        except (RuntimeError, AssertionError, httpx.HTTPError, KeyError, ValueError) as err:
            job.error = str(err)
    return job


def metric_ok_count(instance: Instance) -> float:
    text = httpx.get(f"http://{instance.addr}/metrics", timeout=5).text
    return sum(float(m.group(1)) for m in
               re.finditer(r'^cosyvoice_requests_total\{[^}]*outcome="ok"[^}]*\} ([0-9.e+]+)$', text, re.M))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    assert Path(NGINX).exists(), "Debian nginx is required: .ci/install-deploy-deps.sh"
    tmp = tmp_path_factory.mktemp("nginx_cluster")
    instances = {"stable-0": start_instance(tmp, "stable-0"),
                 "stable-1": start_instance(tmp, "stable-1", monitored=True),
                 "canary-0": start_instance(tmp, "canary-0")}
    nginx = Nginx(tmp / "nginx", free_port())
    try:
        for inst in instances.values():
            wait_for_health(inst.port, 240)
        nginx.render([instances["stable-0"], instances["stable-1"]], [instances["canary-0"]])
        nginx.start()
        yield tmp, instances, nginx
    finally:
        nginx.stop()
        for inst in instances.values():
            inst.stop()


def test_stable_instances_share_gradio_client_traffic_and_a_canary_at_0_gets_none(cluster):
    from gradio_client import Client, handle_file

    _, instances, nginx = cluster
    assert "canary weight: 0 %" in nginx.canary("status")
    before = {name: metric_ok_count(inst) for name, inst in instances.items()}
    errors = []
    for i in range(30):
        try:
            client = Client(nginx.url, verbose=False)     # a new client = a new nginx session
            client.predict(f"第{i}句话。", "zero_shot", handle_file(str(ZERO_SHOT_PROMPT)), ZERO_SHOT_TRANSCRIPT,
                           "", 0, 1.0, False, True, "", api_name="/synthesize")
        except Exception as err:                          # noqa: BLE001 - every failure is counted
            errors.append(repr(err))
    served = {name: metric_ok_count(inst) - before[name] for name, inst in instances.items()}
    assert errors == []
    assert served["stable-0"] > 0 and served["stable-1"] > 0, served
    assert served["canary-0"] == 0, served
    assert sum(served.values()) == 30

    # Every request of one Gradio session reached the same instance (upload, join, event stream, file).
    log = [entry for entry in nginx.access_log() if entry["uri"].startswith("/gradio_api/")]
    assert log and all(entry["request_id"] and entry["upstream_time"] for entry in log)
    assert not [e for e in nginx.access_log() if e["uri"] in ("/health", "/ready")]


def test_probes_are_not_logged_and_request_ids_pass_through(cluster):
    _, _, nginx = cluster
    assert httpx.get(f"{nginx.url}/health", timeout=5).status_code == 200
    given = httpx.get(f"{nginx.url}/version", headers={"X-Request-ID": "trace-abc-123"}, timeout=5)
    made = httpx.get(f"{nginx.url}/version", timeout=5)
    assert given.headers["x-request-id"] == "trace-abc-123"
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    assert given.json()["instance"] == given.headers["x-instance"]
    log = nginx.access_log(until=lambda log: any(e["request_id"] == "trace-abc-123" for e in log))
    uris = [e["uri"] for e in log]
    assert "/health" not in uris and "/version" in uris
    logged = [e for e in log if e["request_id"] == "trace-abc-123"]
    assert logged and logged[0]["instance"] == given.headers["x-instance"] and logged[0]["status"] == 200


def test_canary_weight_forced_channel_and_rollback(cluster):
    _, _, nginx = cluster
    assert "0 % -> 50 %" in nginx.canary("set-weight", "50")
    jobs = [synthesize_via_rest(nginx.url, f"第{i}句。") for i in range(40)]
    assert [j.error for j in jobs if not j.ok] == []
    assert all(len(set(j.instances)) == 1 for j in jobs), "a session was split across instances"
    on_canary = sum(j.instance == "canary-0" for j in jobs)
    assert 12 <= on_canary <= 28, Counter(j.instance for j in jobs)

    forced = [synthesize_via_rest(nginx.url, headers={"X-Canary": "1"}) for _ in range(5)]
    forced += [synthesize_via_rest(nginx.url, cookies={"canary": "1"}) for _ in range(5)]
    assert [j.instance for j in forced] == ["canary-0"] * 10 and all(j.ok for j in forced)

    nginx.canary("rollback")
    assert "canary weight: 0 %" in nginx.canary("status")
    after = [synthesize_via_rest(nginx.url) for _ in range(20)]
    assert all(j.ok for j in after)
    assert sum(j.instance == "canary-0" for j in after) == 0


def test_canary_sh_refuses_a_bad_weight_and_keeps_the_old_one(cluster):
    _, _, nginx = cluster
    out = subprocess.run([str(DEPLOY / "canary.sh"), "--conf-dir", str(nginx.conf_dir), "set-weight", "150"],
                         capture_output=True, text=True)
    assert out.returncode != 0 and "0 to 100" in out.stderr
    assert httpx.get(f"{nginx.url}/lb/weight").text.strip() == "0"


def test_streaming_through_nginx_delivers_audio_before_the_synthesis_ends(cluster):
    _, _, nginx = cluster
    with httpx.Client(base_url=nginx.url, timeout=120) as client:
        config = client.get("/config").json()
        dep = next(d for d in config["dependencies"] if d.get("api_name") == "generate")
        with open(ZERO_SHOT_PROMPT, "rb") as wav:
            uploaded = client.post("/gradio_api/upload", files={"files": wav}).json()[0]
        prompt = {"path": uploaded, "meta": {"_type": "gradio.FileData"}, "orig_name": "prompt.wav"}
        session = uuid.uuid4().hex
        text = "今天天气很好，我们去公园散步吧。" * 8
        joined = client.post("/gradio_api/queue/join", json={
            "data": ["zero_shot", text, prompt, ZERO_SHOT_TRANSCRIPT, "", 0, 1.0, True, True, None], "event_data": None,
            "fn_index": dep["id"], "trigger_id": dep["targets"][0][0], "session_hash": session})
        assert joined.status_code == 200, joined.text
        first_audio_at = completed_at = None
        segment_bytes = 0
        started = time.monotonic()
        with client.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as events:
            for line in events.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message["msg"] == "process_generating" and first_audio_at is None:
                    # The player's stream URL, whether the update came whole or as a diff.
                    urls = re.findall(r'"(http[^"]+\.m3u8)"', json.dumps(message["output"]))
                    if urls:
                        stream = {"url": urls[0]}
                        # Fetch the playlist and its first segment through nginx while the job still runs.
                        # (the page empties its player first, so the first segments may hold no audio yet)
                        playlist = client.get(stream["url"].split(nginx.url, 1)[-1]).text
                        base = stream["url"].rsplit("/", 1)[0].split(nginx.url, 1)[-1]
                        segment_bytes = sum(len(client.get(f"{base}/{segment}").content)
                                            for segment in playlist.splitlines() if segment and not segment.startswith("#"))
                        if segment_bytes > 1000:
                            first_audio_at = time.monotonic() - started
                if message["msg"] == "process_completed":
                    completed_at = time.monotonic() - started
                    assert message["success"], message
                    break
    assert first_audio_at is not None and completed_at is not None
    assert segment_bytes > 1000
    assert first_audio_at < completed_at - 1.0, (first_audio_at, completed_at)


def test_gradio_ui_through_nginx_completes_a_request_in_headless_chromium(cluster):
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian chromium is required: .ci/install-deploy-deps.sh"
    _, _, nginx = cluster
    nginx.canary("set-weight", "34")        # the three instances all take sessions
    instances_seen: list[str] = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = browser.new_page()
            page.on("response", lambda r: instances_seen.append(r.headers.get("x-instance", ""))
                    if "/gradio_api/" in r.url else None)
            # The status line polls every second, so the network is never idle: wait for the form.
            page.goto(nginx.url, wait_until="load", timeout=60_000)
            page.locator("#text-input textarea").wait_for(timeout=60_000)
            page.locator("#text-input textarea").fill("你好，欢迎使用语音合成。")
            page.locator("#prompt-audio input[type=file]").set_input_files(str(ZERO_SHOT_PROMPT))
            page.locator("#prompt-text textarea").fill(ZERO_SHOT_TRANSCRIPT)
            page.wait_for_timeout(1500)     # the upload finishes
            page.get_by_role("button", name="生成 Generate").click()
            page.get_by_text("已保存 Saved").wait_for(timeout=120_000)
            browser.close()
    finally:
        nginx.canary("rollback")
    served = {name for name in instances_seen if name}
    assert len(served) == 1, f"one browser session reached several instances: {instances_seen}"


def test_failing_canary_is_drained_after_max_fails_and_the_rest_succeeds(cluster):
    tmp, instances, nginx = cluster
    faulty = start_instance(tmp, "canary-bad", fault="fail-requests")
    try:
        wait_for_health(faulty.port, 240)
        nginx.render([instances["stable-0"], instances["stable-1"]], [faulty])
        nginx.reload()

        # A synthesis POST the canary answered with 500 reaches the caller as it is: never re-sent.
        post = httpx.post(f"{nginx.url}/gradio_api/call/synthesize", json={"data": ["x"]},
                          headers={"X-Canary": "1", "X-Request-ID": "post-once"}, timeout=10)
        assert post.status_code == 500 and post.headers["x-instance"] == "canary-bad"
        [logged] = [e for e in nginx.access_log(until=lambda log: any(e["request_id"] == "post-once" for e in log))
                    if e["request_id"] == "post-once"]
        reached = [a.strip() for a in re.split(r"[,:] ", logged["upstream"]) if not a.strip().startswith("unix:")]
        assert reached == [faulty.addr], logged     # (the placeholder socket is refused before sending)

        nginx.canary("promote")               # every session to the faulty canary
        started = time.monotonic()
        jobs = [synthesize_via_rest(nginx.url) for _ in range(12)]
        elapsed = time.monotonic() - started
        # Until the drain a session may still hit the canary: a GET it answers 500 is retried elsewhere and
        # counted, but a POST's 500 (or a GET on the last try) goes to the client. So a few jobs at the
        # start may fail; once the canary reached max_fails, every job succeeds on stable.
        failed = [k for k, j in enumerate(jobs) if not j.ok]
        assert len(failed) <= MAX_FAILS and all(k < 2 * MAX_FAILS for k in failed), [j.error for j in jobs]
        assert all(j.ok for j in jobs[2 * MAX_FAILS:])
        assert {j.instance for j in jobs[2 * MAX_FAILS:]} <= {"stable-0", "stable-1"}
        # Drained, not merely retried: with 100 % of sessions on it (about 5 requests each) the canary saw
        # only the requests before the drain and one probe per fail_timeout.
        to_canary = [e for e in nginx.access_log() if faulty.addr in e["upstream"] and e["request_id"] != "post-once"]
        assert MAX_FAILS <= len(to_canary) <= 2 * MAX_FAILS + 2 * int(elapsed // FAIL_TIMEOUT_S), to_canary
        for entry in to_canary:     # each try nginx made, in order: the canary's answer was its 500
            tries = zip(re.split(r"[,:] ", entry["upstream"]), re.split(r"[,:] ", entry["upstream_status"]))
            assert {status for addr, status in tries if addr.strip() == faulty.addr} == {"500"}, entry
    finally:
        nginx.canary("rollback")
        nginx.render([instances["stable-0"], instances["stable-1"]], [instances["canary-0"]])
        nginx.reload()
        faulty.stop()


def test_kill_9_of_a_stable_instance_loses_no_request_and_it_rejoins_after_the_monitor_restart(cluster):
    _, instances, nginx = cluster
    victim = instances["stable-1"]
    old_pid = victim.app_pid()
    os.kill(old_pid, signal.SIGKILL)
    jobs = [synthesize_via_rest(nginx.url) for _ in range(16)]
    assert [j.error for j in jobs if not j.ok] == []

    # monitor.sh starts it again on the same port; after fail_timeout nginx sends it traffic again.
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if victim.app_pid() != old_pid and httpx.get(f"http://{victim.addr}/health", timeout=1).status_code == 200:
                break
        except (OSError, ValueError, httpx.HTTPError):
            pass
        time.sleep(0.5)
    else:
        raise AssertionError("monitor.sh did not bring stable-1 back within 120 s")
    time.sleep(FAIL_TIMEOUT_S + 1)
    rejoined = [synthesize_via_rest(nginx.url) for _ in range(16)]
    assert all(j.ok for j in rejoined)
    assert "stable-1" in {j.instance for j in rejoined}
