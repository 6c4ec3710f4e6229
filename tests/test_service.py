"""The request path's own rules: bounded queue, failures logged and survived, voices cached."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT
from cosyvoice.engines.base import Capabilities, Voice
from cosyvoice.errors import EngineError, ServerBusyError
from cosyvoice.log import flush, setup_logging
from cosyvoice.service import ServiceConfig, SynthesisRequest, SynthesisService


class ControlledEngine:
    """An engine whose timing and failures the test controls (the real engines are tested elsewhere)."""
    name, sample_rate, model_label, device = "controlled", 24000, "test", "cpu"

    def __init__(self):
        self.release = threading.Event()
        self.fail_next = False
        self.prepared = 0

    def capabilities(self):
        return Capabilities(prompt_sample_rates=(16000,))

    def startup_notices(self):
        return []

    def style_notices(self, style):
        return []

    def prepare_voice(self, audio, prompt_text):
        self.prepared += 1
        return Voice(prompt_text=prompt_text)

    def synthesize(self, text, voice, style, seed, on_progress, stream=False):
        self.release.wait(timeout=30)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("simulated crash inside the engine")
        yield np.full(2400, 0.1, np.float32)

    def version_info(self):
        return {}


@pytest.fixture
def service(tmp_path):
    setup_logging(tmp_path / "logs", stdout=False)
    engine = ControlledEngine()
    return SynthesisService(engine, ServiceConfig(outputs_dir=tmp_path / "outputs", workers=1, queue_size=1))


def request(**kwargs) -> SynthesisRequest:
    return SynthesisRequest(**({"text": "你好。", "prompt_wav": str(ZERO_SHOT_PROMPT),
                                "prompt_text": ZERO_SHOT_TRANSCRIPT, "seed": 1} | kwargs))


def test_full_queue_is_refused_with_a_clear_message_and_a_warning(service, tmp_path):
    threads = [threading.Thread(target=service.synthesize, args=(request(),)) for _ in range(2)]
    for thread in threads:
        thread.start()
    deadline = time.time() + 20
    while service.stats()["busy_workers"] + service.stats()["queue_depth"] < 2 and time.time() < deadline:
        time.sleep(0.05)
    assert service.stats()["busy_workers"] == 1 and service.stats()["queue_depth"] == 1
    with pytest.raises(ServerBusyError, match="busy"):
        service.synthesize(request(), request_id="busy01")
    service.engine.release.set()
    for thread in threads:
        thread.join(timeout=30)
    flush()
    log = (tmp_path / "logs" / "runtime.log").read_text()
    assert any("req=busy01" in line and "WARNING" in line and "busy" in line for line in log.splitlines())
    assert service.stats()["busy_workers"] == 0 and service.stats()["queue_depth"] == 0


def test_engine_crash_is_logged_as_error_and_the_next_request_works(service, tmp_path):
    service.engine.release.set()
    service.engine.fail_next = True
    with pytest.raises(EngineError, match="Internal error"):
        service.synthesize(request(), request_id="crash1")
    result = service.synthesize(request(), request_id="after1")
    assert result.path.exists()
    flush()
    log = (tmp_path / "logs" / "runtime.log").read_text()
    assert any("req=crash1" in line and "ERROR" in line and "simulated crash" in line for line in log.splitlines())
    assert not list((tmp_path / "outputs").glob("*crash1*"))


def test_voice_is_prepared_once_per_prompt(service):
    service.engine.release.set()
    service.synthesize(request())
    service.synthesize(request(text="再见。"))
    assert service.engine.prepared == 1
    service.synthesize(request(prompt_text="另一个文本。"))
    assert service.engine.prepared == 2


def test_long_text_is_split_into_pieces_joined_with_pauses(service):
    service.engine.release.set()
    service.config.max_piece_chars = 10
    text = "第一句话在这里。第二句话在这里。第三句话在这里。"
    result = service.synthesize(request(text=text))
    import soundfile as sf
    data, rate = sf.read(result.path)
    pieces = 3
    expected = pieces * 2400 + (pieces - 1) * int(service.config.pause_seconds * rate)
    assert len(data) == expected
