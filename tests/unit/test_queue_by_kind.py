"""/metrics tells people waiting from job lines waiting: cosyvoice_queue_depth_by_kind{kind}."""
from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
from prometheus_client import generate_latest

from cosyvoice.ops import metrics
from cosyvoice.service.admission import WORK_KIND
from cosyvoice.jobs.voicing import voice_line
from cosyvoice.service.synthesis import ServiceConfig, SynthesisService
from test_service import ControlledEngine, request


def depth_by_kind() -> dict[str, float]:
    text = generate_latest(metrics.REGISTRY).decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("cosyvoice_queue_depth_by_kind{"):
            kind = line.split('kind="', 1)[1].split('"', 1)[0]
            out[kind] = float(line.rsplit(" ", 1)[1])
    return out


@pytest.fixture
def service(tmp_path):
    return SynthesisService(ControlledEngine(), ServiceConfig(outputs_dir=tmp_path / "outputs", workers=1,
                                                              queue_size=4))


def test_waiting_interactive_requests_and_job_lines_are_counted_apart(service):
    def run(kind: str) -> None:
        WORK_KIND.set(kind)                      # each thread has its own context
        service.synthesize(request())

    threads = [threading.Thread(target=run, args=(kind,)) for kind in ("interactive", "interactive", "job", "job")]
    for thread in threads:
        thread.start()
    deadline = time.time() + 20
    while service.stats()["queue_depth"] < 3 and time.time() < deadline:
        time.sleep(0.05)
    # one request holds the only slot; the other three wait, split by kind
    stats = service.stats()["queue_depth_by_kind"]
    assert sum(stats.values()) == 3 and stats["job"] >= 1 and stats["interactive"] >= 1
    assert depth_by_kind() == {kind: float(count) for kind, count in stats.items()}
    service.engine.release.set()
    for thread in threads:
        thread.join(timeout=30)
    assert depth_by_kind() == {"interactive": 0.0, "job": 0.0}


def test_a_job_line_is_voiced_as_kind_job_and_the_caller_is_interactive_again(tmp_path):
    seen = []

    def synthesize(req, request_id, save=True):
        seen.append(WORK_KIND.get())
        raise RuntimeError("stop here")

    fake = SimpleNamespace(synthesize=synthesize)
    with pytest.raises(RuntimeError):
        voice_line(fake, {"text": "Line.", "voice": "narrator", "speed": 1.0}, "job1.1")
    assert seen == ["job"] and WORK_KIND.get() == "interactive"
