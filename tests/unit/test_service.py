"""The request path's own rules: bounded queue, failures logged and survived, voices cached."""
from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest

from conftest import ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT
from cosyvoice.engines.base import Capabilities, Voice
from cosyvoice.errors import EngineError, ServerBusyError, UserInputError
from cosyvoice.ops.log import flush, setup_logging
from cosyvoice.service.synthesis import ServiceConfig, SynthesisRequest, SynthesisService


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

    def parallelism(self):
        return 1

    def text_token_counter(self):
        return None

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

    def feature_identity(self):
        return "controlled/v1"

    def export_voice(self, voice):
        return {}

    def import_voice(self, arrays, prompt_text):
        return Voice(prompt_text=prompt_text)


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


def test_pieces_are_joined_without_added_silence_and_a_written_pause_is_exact(service):
    service.engine.release.set()
    service.config = dataclasses.replace(service.config, max_piece_units=10)
    import soundfile as sf

    text = "第一句话在这里。第二句话在这里。第三句话在这里。"
    data, rate = sf.read(service.synthesize(request(text=text)).path)
    assert len(data) == 3 * 2400                     # three pieces, nothing between them
    data, rate = sf.read(service.synthesize(request(text="第一句话在这里。[pause:0.5]第二句话在这里。")).path)
    assert len(data) == 2 * 2400 + int(0.5 * rate)
    assert np.abs(data[2400:2400 + int(0.5 * rate)]).max() == 0


def test_bad_pause_value_is_refused_with_its_range(service):
    with pytest.raises(UserInputError, match="0.05"):
        service.synthesize(request(text="你好。[pause:99]再见。"))


def test_lite_output_is_exactly_its_pieces_back_to_back(tmp_path):
    import soundfile as sf

    from cosyvoice.audio.prompt import load_prompt_audio
    from cosyvoice.engines.base import Style
    from cosyvoice.engines.lite import LiteEngine

    setup_logging(tmp_path / "logs", stdout=False)
    engine = LiteEngine()
    lite = SynthesisService(engine, ServiceConfig(outputs_dir=tmp_path / "outputs", max_piece_units=6))
    text = "今天天气很好。我们一起去公园。然后回家吃饭。"
    result = lite.synthesize(request(text=text, seed=5))
    pieces = lite.frontend.process(text, max_piece_units=6).pieces
    assert len(pieces) == 3
    voice = engine.prepare_voice(load_prompt_audio(ZERO_SHOT_PROMPT).audio, ZERO_SHOT_TRANSCRIPT)
    expected = sum(len(chunk) for index, piece in enumerate(pieces)
                   for chunk in engine.synthesize(piece, voice, Style("zero_shot"), 5 + index, lambda p: None))
    assert sf.info(str(result.path)).frames == expected
