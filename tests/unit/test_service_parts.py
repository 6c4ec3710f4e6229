"""The service's parts as a front end sees them: the mode decided once, the seed told before any audio,
one voice cache counted on every path, the admission width taken from the engine, a dialogue saved once."""
from __future__ import annotations

import pytest

from conftest import AUDIO, ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT
from cosyvoice.ops import metrics
from cosyvoice.service.dialogue import DialogueRequest
from cosyvoice.engines.lite import LiteEngine
from cosyvoice.errors import UserInputError
from cosyvoice.ops.log import setup_logging
from cosyvoice.service.synthesis import AUTO, ServiceConfig, SynthesisRequest, SynthesisService


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("parts")
    setup_logging(tmp / "logs", stdout=False)
    service = SynthesisService(LiteEngine(), ServiceConfig(outputs_dir=tmp / "outputs", voices_dir=tmp / "voices"))
    service.save_voice("with-text", str(ZERO_SHOT_PROMPT), ZERO_SHOT_TRANSCRIPT)
    service.save_voice("no-text", str(AUDIO / "f5_basic_ref_en.wav"))
    return service


def cache_count(result: str) -> float:
    return metrics.REGISTRY.get_sample_value("cosyvoice_voice_cache_lookups_total", {"result": result}) or 0.0


def test_auto_mode_is_decided_by_the_service_and_the_seed_is_told_before_audio(service):
    cases = [("with-text", "", "zero_shot"), ("no-text", "", "cross_lingual"), ("no-text", "请用非常快的语速说", "instruct")]
    for voice, instruction, mode in cases:
        events = list(service.run(SynthesisRequest(text="你好。", mode=AUTO, voice=voice, instruct_text=instruction,
                                                   seed=7)))
        first_audio = next(i for i, e in enumerate(events) if e.chunk is not None)
        accepted = next(i for i, e in enumerate(events) if e.accepted is not None)
        assert accepted < first_audio and events[accepted].accepted.seed == 7
        assert events[accepted].accepted.mode == mode
        assert events[accepted].accepted.voice_id == service.library.resolve(voice).id     # the resolved id travels
    with pytest.raises(UserInputError, match="transcript"):
        service.synthesize(SynthesisRequest(text="你好。", mode="zero_shot", voice="no-text"))


def test_one_voice_cache_counts_saved_voices_and_uploads_alike(service):
    for request in (SynthesisRequest(text="你好。", mode=AUTO, voice="with-text", seed=1),
                    SynthesisRequest(text="你好。", mode=AUTO, prompt_wav=str(ZERO_SHOT_PROMPT),
                                     prompt_text=ZERO_SHOT_TRANSCRIPT, seed=1)):
        hits, misses = cache_count("hit"), cache_count("miss")
        service.synthesize(request)
        service.synthesize(request)
        assert cache_count("miss") - misses <= 1 and cache_count("hit") - hits >= 1


def test_admission_width_defaults_to_the_engines_parallelism(service, tmp_path):
    assert service.stats()["workers"] == LiteEngine().parallelism()
    narrow = SynthesisService(LiteEngine(), ServiceConfig(outputs_dir=tmp_path / "o", voices_dir=tmp_path / "v",
                                                          workers=1))
    assert narrow.stats()["workers"] == 1


def test_a_dialogue_is_saved_once_with_one_sidecar(service):
    before = set(service.config.outputs_dir.iterdir())
    result = service.synthesize_dialogue(DialogueRequest(script="[A] 你好。\n[B] Hello.\n[A] 再见。",
                                                         voices={"A": "with-text", "B": "no-text"}, seed=5))
    new = set(service.config.outputs_dir.iterdir()) - before
    assert sorted(p.suffix for p in new) == [".json", ".wav"] and result.path in new
    record = service.outputs.record(result.path.stem)
    assert record["mode"] == "dialogue" and [t["speaker"] for t in record["turns"]] == ["A", "B", "A"]
    with pytest.raises(UserInputError, match="[Ss]eed") as refused:
        service.synthesize_dialogue(DialogueRequest(script="[A] 你好。", voices={"A": "with-text"}, seed="abc"))
    with pytest.raises(UserInputError) as speech_refused:
        service.synthesize(SynthesisRequest(text="你好。", voice="with-text", seed="abc"))
    assert str(refused.value) == str(speech_refused.value) and refused.value.param == "seed"
