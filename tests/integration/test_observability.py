"""Watching requests: spans per stage, JSON log lines, readiness, and the numbers in a real Prometheus."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from conftest import ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT, free_port, start_app, stop_app, synthesize_as


@pytest.fixture(scope="module")
def _provider():
    """OpenTelemetry takes one global tracer provider per process: install it once, with an in-memory exporter."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    trace.set_tracer_provider(provider)
    return memory


@pytest.fixture()
def exporter(_provider):
    _provider.clear()
    return _provider


def test_one_request_span_with_its_stage_spans_in_order(tmp_path, exporter):
    from cosyvoice.engines.lite import LiteEngine
    from cosyvoice.ops.log import setup_logging
    from cosyvoice.service.synthesis import ServiceConfig, SynthesisRequest, SynthesisService

    setup_logging(tmp_path / "logs", stdout=False)
    service = SynthesisService(LiteEngine(), ServiceConfig(outputs_dir=tmp_path / "outputs"))
    service.synthesize(SynthesisRequest(text="你好。", prompt_wav=str(ZERO_SHOT_PROMPT),
                                        prompt_text=ZERO_SHOT_TRANSCRIPT, seed=1), request_id="span01")
    spans = exporter.get_finished_spans()
    requests = [s for s in spans if s.name == "synthesis request"]
    assert len(requests) == 1
    root = requests[0]
    assert root.attributes["request.id"] == "span01" and root.attributes["audio.seconds"] > 0
    children = sorted((s for s in spans if s.parent and s.parent.span_id == root.context.span_id),
                      key=lambda s: s.start_time)
    assert [s.name for s in children] == ["validate", "text", "voice", "queue", "features", "synthesize", "save"]
    assert all(child.end_time <= root.end_time for child in children)


@pytest.mark.slow
def test_ready_is_503_until_the_warm_up_and_health_stays_fast(tmp_path):
    port = free_port()
    env = dict(os.environ, COSYVOICE_TEST_WARMUP_DELAY_S="4")
    log_dir = tmp_path / "logs"
    proc = subprocess.Popen([os.sys.executable, str(Path(__file__).resolve().parents[2] / "app.py"),
                             "--engine", "lite", "--port", str(port), "--log-dir", str(log_dir),
                             "--outputs-dir", str(tmp_path / "outputs")], env=env,
                            stdout=open(tmp_path / "app.out", "wb"), stderr=subprocess.STDOUT)
    seen, slowest = [], 0.0
    try:
        deadline = time.time() + 120
        while time.time() < deadline and 200 not in seen:
            try:
                started = time.perf_counter()
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                slowest = max(slowest, time.perf_counter() - started)
                ready = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2)
                if not seen or seen[-1] != ready.status_code:
                    seen.append(ready.status_code)
                    if ready.status_code == 503:
                        assert "warming up" in ready.json()["reason"]
            except httpx.ConnectError:
                pass
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert seen == [503, 200], seen
    # A generous bound on a shared 2-core box; the measured latency is in the README (bench/health_latency.py).
    assert slowest < 1.0, slowest


@pytest.mark.slow
def test_json_log_lines_parse_and_carry_the_given_request_id(tmp_path):
    app = start_app(tmp_path, "--engine", "lite", "--log-format", "json")
    try:
        response = httpx.get(f"{app.url}/health", headers={"X-Request-ID": "probe-7"}, timeout=5)
        assert response.headers["x-request-id"] == "probe-7"
        assert len(httpx.get(f"{app.url}/health", timeout=5).headers["x-request-id"]) >= 6
        synthesize_as(app, "json-req-1")
        from cosyvoice.ops.log import flush
        flush()
        time.sleep(1)
        entries = [json.loads(line) for line in (app.log_dir / "runtime.jsonl").read_text().splitlines()]
    finally:
        stop_app(app)
    mine = [e for e in entries if e["request_id"] == "json-req-1"]
    assert mine and {"time", "level", "stage", "message"} <= set(mine[0])
    saved = next(e for e in mine if e["level"] == "SUCCESS")
    assert saved["stage"] == "save" and saved["figures"]["audio_s"] > 0      # the stage it was written in
    order = ["validate", "text", "voice", "queue", "features", "synthesize", "save", "done"]
    stages = [order.index(e["stage"]) for e in mine]
    assert stages == sorted(stages) and stages[0] == 0, [e["stage"] for e in mine]   # read when written, in order


PROMETHEUS = shutil.which("prometheus")
requires_prometheus = pytest.mark.skipif(PROMETHEUS is None and os.environ.get("CI") != "true",
                                         reason="prometheus not installed (apt-get install prometheus)")


def _query(base: str, expr: str) -> list:
    response = httpx.get(f"{base}/api/v1/query", params={"query": expr}, timeout=5).json()
    return response["data"]["result"]


@pytest.mark.slow
@requires_prometheus
def test_a_real_prometheus_reads_the_request_count_and_stage_histograms(tmp_path):
    assert PROMETHEUS, "prometheus is required in CI"
    app = start_app(tmp_path, "--engine", "lite")
    prom_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(f"""
global: {{scrape_interval: 1s}}
scrape_configs:
  - job_name: cosyvoice
    static_configs: [{{targets: ['127.0.0.1:{app.port}']}}]
""")
    prom = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=open(tmp_path / "prom.out", "wb"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{prom_port}"
    try:
        for index in range(5):
            synthesize_as(app, f"prom-{index}")
        deadline = time.time() + 60
        total = None
        while time.time() < deadline:
            try:
                result = _query(base, 'sum(cosyvoice_requests_total{outcome="ok"})')
                total = float(result[0]["value"][1]) if result else None
                if total == 5:
                    break
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(1)
        assert total == 5, (tmp_path / "prom.out").read_text()[-2000:]
        stages = {r["metric"]["stage"]: float(r["value"][1])
                  for r in _query(base, "cosyvoice_stage_duration_seconds_count")}
        for stage in ("text", "voice", "synthesize", "save"):
            assert stages.get(stage, 0) >= 5, stages
        p95 = "histogram_quantile(0.95, sum by (le) (rate(cosyvoice_request_duration_seconds_bucket[1m])))"
        deadline = time.time() + 30          # rate() needs two scrapes after the requests
        while not _query(base, p95) and time.time() < deadline:
            time.sleep(1)
        assert _query(base, p95)
    finally:
        prom.terminate()
        prom.wait(timeout=30)
        stop_app(app)


def test_the_neural_engine_traces_llm_flow_and_hift_under_synthesize(tmp_path, exporter):
    import torch

    from conftest import FIXTURE
    from cosyvoice.engines.cosyvoice3 import CosyVoice3Engine
    from cosyvoice.ops.log import flush, setup_logging
    from cosyvoice.service.synthesis import ServiceConfig, SynthesisRequest, SynthesisService
    from tiny_onnx import make_tiny_model_dir

    torch.set_num_threads(2)
    setup_logging(tmp_path / "logs", stdout=False)
    engine = CosyVoice3Engine(make_tiny_model_dir(FIXTURE, tmp_path / "model"), device="cpu", precision="fp32")
    service = SynthesisService(engine, ServiceConfig(outputs_dir=tmp_path / "outputs"))
    service.synthesize(SynthesisRequest(text="你好。", prompt_wav=str(ZERO_SHOT_PROMPT),
                                        prompt_text=ZERO_SHOT_TRANSCRIPT, seed=1), request_id="neural1")
    spans = exporter.get_finished_spans()
    synthesize = next(s for s in spans if s.name == "synthesize")
    inner = sorted((s for s in spans if s.parent and s.parent.span_id == synthesize.context.span_id),
                   key=lambda s: s.start_time)
    assert [s.name for s in inner] == ["llm", "flow", "hift"]
    flush()
    log = (tmp_path / "logs" / "runtime.log").read_text()
    # Progress is logged as progress: a WARNING would mean a progress line was taken for a notice.
    assert "speech tokens" not in "".join(line for line in log.splitlines() if "WARNING" in line)
