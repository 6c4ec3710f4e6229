"""The voice library: what a saved voice keeps, how names and archives are checked, and that a saved
voice speaks exactly like the upload it came from (lite engine, in-process service)."""
from __future__ import annotations

import json
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import AUDIO, ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT
from cosyvoice.errors import UserInputError
from cosyvoice.ops.log import flush, setup_logging
from cosyvoice.service.synthesis import ServiceConfig, SynthesisRequest, SynthesisService
from cosyvoice.voices.library import (VoiceLibrary, VoiceLibraryError, VoiceNameTaken, VoiceNotFound, check_voices_dir,
                              read_npz, validate_name)

TEXT = "今天天气很好，我们一起去公园散步吧。"


@pytest.fixture(scope="module")
def engine():
    from cosyvoice.engines.lite import LiteEngine

    return LiteEngine()


@pytest.fixture
def service(engine, tmp_path):
    setup_logging(tmp_path / "logs", stdout=False)
    return SynthesisService(engine, ServiceConfig(outputs_dir=tmp_path / "outputs", voices_dir=tmp_path / "voices"))


def log_text(tmp_path: Path) -> str:
    flush()
    return (tmp_path / "logs" / "runtime.log").read_text(encoding="utf-8")


def samples(result) -> np.ndarray:
    return sf.read(result.path, dtype="float32")[0]


def saved_state(root: Path) -> list[str]:
    """Everything under the library folder except its lock file: what an import may not leave behind."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name != ".lock") if root.exists() else []


# ---- names ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["小王", "narrator one", "Anna-2 (calm)", "o'brien", "v1.2"])
def test_reasonable_names_are_kept_as_typed(name):
    assert validate_name(f"  {name} ") == name


@pytest.mark.parametrize("name,expected", [
    ("../etc", "characters a name cannot hold"), ("a/b", "characters a name cannot hold"),
    ("a\\b", "characters a name cannot hold"), (".hidden", "not starting with a dot"),
    ("x\x00y", "characters a name cannot hold"), ("line\nbreak", "characters a name cannot hold"),
    ("", "empty"), ("   ", "empty"), ("n" * 65, "limit is 64"), (42, "must be text"),
])
def test_bad_names_are_refused_with_the_reason(name, expected):
    with pytest.raises(UserInputError, match=expected):
        validate_name(name)


def test_names_are_unique_ignoring_case_and_never_touch_the_file_system(tmp_path):
    library = VoiceLibrary(tmp_path / "voices")
    entry = library.add("Narrator", ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT)
    with pytest.raises(VoiceNameTaken, match="taken"):
        library.add("narrator", ZERO_SHOT_PROMPT)
    assert [p.name for p in (tmp_path / "voices").iterdir() if not p.name.startswith(".")] == [entry.id]
    assert library.resolve("NARRATOR").id == entry.id and library.get(entry.id).name == "Narrator"


def test_voices_dir_inside_the_model_dir_is_refused(tmp_path):
    with pytest.raises(VoiceLibraryError, match="inside the model dir"):
        check_voices_dir(tmp_path / "model" / "voices", tmp_path / "model")
    check_voices_dir(tmp_path / "voices", tmp_path / "model")


# ---- what is stored ---------------------------------------------------------------------------------

def test_a_saved_voice_keeps_audio_transcript_metadata_and_features(service, tmp_path):
    entry = service.save_voice("小王", str(ZERO_SHOT_PROMPT), ZERO_SHOT_TRANSCRIPT, "zh", "warm")
    folder = tmp_path / "voices" / entry.id
    meta = json.loads((folder / "voice.json").read_text(encoding="utf-8"))
    assert {"id", "name", "created", "duration", "sha256", "language", "notes"} <= set(meta)
    assert meta["name"] == "小王" and meta["transcript"] == ZERO_SHOT_TRANSCRIPT and meta["language"] == "zh"
    stored, rate = sf.read(folder / "prompt.wav")
    assert stored.ndim == 1 and abs(len(stored) / rate - meta["duration"]) < 0.01
    [features] = (folder / "features").glob("*.npz")
    arrays = read_npz(features)      # allow_pickle=False inside
    assert str(arrays["__identity__"]) == service.engine.feature_identity()


def test_a_saved_voice_speaks_exactly_like_its_upload_and_loads_features(service, engine, tmp_path):
    upload = service.synthesize(SynthesisRequest(text=TEXT, prompt_wav=str(ZERO_SHOT_PROMPT),
                                                 prompt_text=ZERO_SHOT_TRANSCRIPT, seed=11))
    service.save_voice("narrator", str(ZERO_SHOT_PROMPT), ZERO_SHOT_TRANSCRIPT)
    # a fresh service = a restart: nothing cached in memory
    fresh = SynthesisService(engine, ServiceConfig(outputs_dir=tmp_path / "outputs", voices_dir=tmp_path / "voices"))
    saved = fresh.synthesize(SynthesisRequest(text=TEXT, voice="narrator", seed=11), request_id="loadv")
    assert np.array_equal(samples(upload), samples(saved))
    lines = [line for line in log_text(tmp_path).splitlines() if "req=loadv " in line]
    assert any("loaded from the voice library, not extracted" in line for line in lines), lines
    assert not any("prompt audio:" in line for line in lines), "the saved recording was decoded again"


def test_each_mode_works_from_a_saved_voice(service):
    service.save_voice("narrator", str(ZERO_SHOT_PROMPT), ZERO_SHOT_TRANSCRIPT)
    for mode, extra in (("zero_shot", {}), ("cross_lingual", {}), ("instruct", {"instruct_text": "请用非常快的语速说"})):
        result = service.synthesize(SynthesisRequest(text=TEXT, mode=mode, voice="narrator", seed=1, **extra))
        assert result.audio_seconds > 1.0


def test_a_voice_without_transcript_refuses_zero_shot_but_does_cross_lingual(service):
    service.save_voice("bare", str(AUDIO / "cross_lingual_prompt.wav"))
    with pytest.raises(UserInputError, match="without a transcript"):
        service.synthesize(SynthesisRequest(text=TEXT, voice="bare"))
    assert service.synthesize(SynthesisRequest(text="Good morning.", mode="cross_lingual", voice="bare")).path.exists()


def test_unknown_voice_and_voice_plus_recording_get_clear_messages(service):
    with pytest.raises(VoiceNotFound, match="no saved voice 'ghost'"):
        service.synthesize(SynthesisRequest(text=TEXT, voice="ghost"))
    with pytest.raises(UserInputError, match="either a saved voice or a prompt recording"):
        service.synthesize(SynthesisRequest(text=TEXT, voice="ghost", prompt_wav=str(ZERO_SHOT_PROMPT)))


def test_changed_model_identity_recomputes_from_the_stored_audio_and_says_so(service, engine, tmp_path,
                                                                             monkeypatch):
    service.save_voice("narrator", str(ZERO_SHOT_PROMPT), ZERO_SHOT_TRANSCRIPT)
    before = service.synthesize(SynthesisRequest(text=TEXT, voice="narrator", seed=5))
    monkeypatch.setattr(type(engine), "feature_identity", lambda self: "lite/a-newer-model")
    fresh = SynthesisService(engine, ServiceConfig(outputs_dir=tmp_path / "outputs", voices_dir=tmp_path / "voices"))
    after = fresh.synthesize(SynthesisRequest(text=TEXT, voice="narrator", seed=5))
    assert any("recomputed from the stored recording" in notice and "a-newer-model" in notice
               for notice in after.notices), after.notices
    # the stored recording is bit-exact, so recomputed features give the same audio
    assert np.array_equal(samples(before), samples(after))
    again = SynthesisService(engine, ServiceConfig(outputs_dir=tmp_path / "outputs", voices_dir=tmp_path / "voices"))
    assert not again.synthesize(SynthesisRequest(text=TEXT, voice="narrator", seed=5)).notices


def test_a_corrupt_entry_is_listed_as_broken_with_a_warning_and_others_still_work(service, tmp_path):
    good = service.save_voice("good", str(ZERO_SHOT_PROMPT), ZERO_SHOT_TRANSCRIPT)
    broken = tmp_path / "voices" / "voice_deadbeef0000"
    broken.mkdir()
    (broken / "voice.json").write_text("{not json", encoding="utf-8")
    entries = service.library.entries()
    assert {e.id: e.broken for e in entries} == {good.id: False, broken.name: True}
    assert [e.id for e in service.library.usable_entries()] == [good.id]
    assert any("WARNING" in line and "broken voice folder" in line for line in log_text(tmp_path).splitlines())
    assert service.synthesize(SynthesisRequest(text=TEXT, voice="good", seed=1)).path.exists()
    service.library.delete(broken.name)
    assert not broken.exists()


def test_damaged_feature_file_is_recomputed_not_unpickled(service, tmp_path):
    entry = service.save_voice("narrator", str(ZERO_SHOT_PROMPT), ZERO_SHOT_TRANSCRIPT)
    [features] = (tmp_path / "voices" / entry.id / "features").glob("*.npz")
    np.savez(features, variant=np.array([{"evil": 1}], dtype=object))       # needs pickle to load
    fresh = SynthesisService(service.engine, ServiceConfig(outputs_dir=tmp_path / "outputs",
                                                           voices_dir=tmp_path / "voices"))
    result = fresh.synthesize(SynthesisRequest(text=TEXT, voice="narrator", seed=2))
    assert any("could not be read" in notice for notice in result.notices), result.notices


# ---- concurrency ------------------------------------------------------------------------------------

def test_two_concurrent_saves_of_one_name_leave_one_whole_voice(tmp_path):
    library = VoiceLibrary(tmp_path / "voices")
    for round_ in range(4):
        name = f"twin {round_}"
        start = threading.Barrier(2)
        outcomes: list[object] = []

        def save():
            start.wait()
            try:
                outcomes.append(library.add(name, ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT))
            except VoiceNameTaken as err:
                outcomes.append(err)

        threads = [threading.Thread(target=save) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        winners = [o for o in outcomes if not isinstance(o, Exception)]
        assert len(winners) == 1 and "taken" in str(next(o for o in outcomes if isinstance(o, Exception)))
        assert [e.id for e in library.usable_entries() if e.name == name] == [winners[0].id]
    assert not [p for p in (tmp_path / "voices").iterdir() if p.name.startswith(".tmp-")]
    assert all(not e.broken for e in library.entries())


def test_delete_while_in_use_lets_the_running_request_finish(service):
    entry = service.save_voice("busy", str(ZERO_SHOT_PROMPT), ZERO_SHOT_TRANSCRIPT)
    reference = samples(service.synthesize(SynthesisRequest(text=TEXT * 2, voice="busy", seed=9, stream=True)))
    fresh = SynthesisService(service.engine, ServiceConfig(outputs_dir=service.config.outputs_dir,
                                                           voices_dir=service.config.voices_dir))
    events = fresh.run(SynthesisRequest(text=TEXT * 2, voice="busy", seed=9, stream=True))
    first_chunk = next(event for event in events if event.chunk is not None)
    fresh.library.delete(entry.id)                 # the request is past its voice stage, mid-synthesis
    result = [event.result for event in events if event.result is not None][0]
    assert first_chunk.chunk.size and np.array_equal(samples(result), reference)
    with pytest.raises(VoiceNotFound):
        fresh.synthesize(SynthesisRequest(text=TEXT, voice="busy"))
    assert not any(p.name.startswith(".trash-") for p in fresh.library.root.iterdir())


# ---- export / import --------------------------------------------------------------------------------

def test_export_then_import_gives_the_same_voice_under_a_new_id(service, tmp_path):
    entry = service.save_voice("narrator", str(ZERO_SHOT_PROMPT), ZERO_SHOT_TRANSCRIPT)
    archive = service.library.export_zip("narrator", tmp_path / "narrator.zip")
    other = VoiceLibrary(tmp_path / "elsewhere")
    imported = other.import_zip(archive)
    assert imported.name == "narrator" and imported.transcript == ZERO_SHOT_TRANSCRIPT
    assert imported.sha256 == entry.sha256 and imported.id != entry.id
    voice, notice = other.load_voice(imported, service.engine, None)
    assert notice is None, "features travelled with the archive and should load as they are"
    with pytest.raises(VoiceNameTaken):
        service.library.import_zip(archive)
    assert service.library.import_zip(archive, name="narrator copy").name == "narrator copy"


def _archive(tmp_path: Path, members: dict[str, bytes], name="bad.zip", symlink: str | None = None) -> Path:
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in members.items():
            archive.writestr(member, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (0o120777 << 16)
            archive.writestr(info, "/etc/passwd")
    return path


def _good_members(service, tmp_path) -> dict[str, bytes]:
    service.library.add("source", ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT)
    exported = service.library.export_zip("source", tmp_path / "source.zip")
    service.library.delete("source")
    with zipfile.ZipFile(exported) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


@pytest.mark.parametrize("case,expected", [
    ("not a zip", "not a readable zip"),
    ("path escape", "not a file a voice has"),
    ("absolute path", "not a file a voice has"),
    ("symlink", "not a file a voice has"),
    ("missing audio", "lacks"),
    ("wrong checksum", "does not match the checksum"),
    ("truncated wav", "not readable audio"),
    ("pickled features", "holds Python objects"),
    ("bad name", "characters a name cannot hold"),
    ("huge transcript", "transcript is 5000 characters long"),
])
def test_a_bad_archive_is_refused_clearly_and_nothing_is_half_imported(service, tmp_path, case, expected):
    members = _good_members(service, tmp_path)
    symlink = None
    if case == "not a zip":
        (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04 this is not really a zip")
        path = tmp_path / "bad.zip"
    else:
        if case == "path escape":
            members["../../escaped.txt"] = b"gotcha"
        elif case == "absolute path":
            members[str(tmp_path / "absolute.txt")] = b"gotcha"
        elif case == "symlink":
            symlink = "features/link.npz"
        elif case == "missing audio":
            members.pop("prompt.wav")
        elif case == "wrong checksum":
            data, rate = sf.read(ZERO_SHOT_PROMPT, dtype="float32")
            import io
            buffer = io.BytesIO()
            sf.write(buffer, data[: len(data) // 2], rate, format="WAV")
            members["prompt.wav"] = buffer.getvalue()
        elif case == "truncated wav":
            members["prompt.wav"] = members["prompt.wav"][:30]
        elif case == "pickled features":
            import io
            buffer = io.BytesIO()
            np.savez(buffer, x=np.array([{"evil": 1}], dtype=object))
            members["features/0123456789abcdef.npz"] = buffer.getvalue()
        elif case == "bad name":
            meta = json.loads(members["voice.json"])
            meta["name"] = "../../outside"
            members["voice.json"] = json.dumps(meta).encode()
        elif case == "huge transcript":
            meta = json.loads(members["voice.json"])
            meta["transcript"] = "长" * 5000
            members["voice.json"] = json.dumps(meta).encode()
        path = _archive(tmp_path, members, symlink=symlink)
    before = saved_state(service.library.root)
    with pytest.raises(UserInputError, match=expected):
        service.library.import_zip(path)
    assert saved_state(service.library.root) == before, "something of the refused archive stayed"
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path.parent / "escaped.txt").exists()
    assert not (tmp_path / "absolute.txt").exists()


# ---- the command line -------------------------------------------------------------------------------

def test_cli_manages_the_library_and_synthesises_with_a_saved_voice(tmp_path):
    import subprocess

    from conftest import PYTHON, ROOT

    def cli(*args):
        return subprocess.run([PYTHON, "-m", "cosyvoice", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=300)

    voices = ["--voices-dir", str(tmp_path / "voices")]
    added = cli("voices", *voices, "add", "narrator", str(ZERO_SHOT_PROMPT), "--transcript", ZERO_SHOT_TRANSCRIPT)
    assert added.returncode == 0 and "saved narrator" in added.stdout, added.stderr
    assert cli("voices", *voices, "add", "../x", str(ZERO_SHOT_PROMPT)).returncode == 1
    assert cli("voices", *voices, "rename", "narrator", "storyteller").returncode == 0
    assert "storyteller" in cli("voices", *voices, "list").stdout
    assert cli("voices", *voices, "export", "storyteller", str(tmp_path / "s.zip")).returncode == 0
    assert cli("voices", *voices, "delete", "storyteller").returncode == 0
    assert "storyteller" not in cli("voices", *voices, "list").stdout
    assert cli("voices", *voices, "import", str(tmp_path / "s.zip")).returncode == 0
    bad = cli("voices", *voices, "import", str(ZERO_SHOT_PROMPT))
    assert bad.returncode == 1 and "not a voice archive" in bad.stderr and "Traceback" not in bad.stderr
    synth = cli("synth", "--engine", "lite", "--voice", "storyteller", "--text", "今天天气很好。", "--seed", "1",
                *voices, "--outputs-dir", str(tmp_path / "outputs"), "--log-dir", str(tmp_path / "logs"))
    assert synth.returncode == 0, synth.stderr
    assert sf.info(synth.stdout.strip().splitlines()[-1]).duration > 0.5


# ---- dialogue ---------------------------------------------------------------------------------------

def _median_f0(samples: np.ndarray, rate: int) -> float:
    import pyworld

    f0, _ = pyworld.dio(samples.astype(np.float64), rate)
    return float(np.median(f0[f0 > 0]))


def test_a_two_speaker_dialogue_is_one_file_with_each_turn_from_its_voice_in_order(service):
    from cosyvoice.service.dialogue import synthesize_dialogue

    service.save_voice("小王", str(ZERO_SHOT_PROMPT), ZERO_SHOT_TRANSCRIPT)        # ~270 Hz voice
    service.save_voice("Bob", str(AUDIO / "f5_basic_ref_en.wav"))                   # ~110 Hz voice, no transcript
    script = "[S1] 你好，今天去哪儿？\n[S2] Let's go to the park.\n[S1] 好呀，我们走吧。"
    result = synthesize_dialogue(service, script, "S1=小王, S2=Bob", gap=0.5, seed=40)
    audio, rate = sf.read(result.path, dtype="float32")
    assert [t.voice for t in result.turns] == ["小王", "Bob", "小王"]
    spans = [(round(t.start_s * rate), round(t.end_s * rate)) for t in result.turns]
    assert spans[0][0] == 0 and spans[-1][1] == len(audio)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start - end == round(0.5 * rate) and not np.any(audio[end:start])      # the gap is silence
    # each turn is exactly what that voice says alone with the turn's seed and mode
    alone = [service.synthesize(SynthesisRequest(text="你好，今天去哪儿？", voice="小王", seed=40)),
             service.synthesize(SynthesisRequest(text="Let's go to the park.", mode="cross_lingual", voice="Bob",
                                                 seed=41)),
             service.synthesize(SynthesisRequest(text="好呀，我们走吧。", voice="小王", seed=42))]
    for (start, end), single in zip(spans, alone):
        assert np.array_equal(audio[start:end], samples(single))
    pitches = [_median_f0(audio[start:end], rate) for start, end in spans]
    assert pitches[0] > 1.5 * pitches[1] and pitches[2] > 1.5 * pitches[1], pitches


def test_dialogue_names_instructions_and_mistakes(service):
    from cosyvoice.service.dialogue import parse_script, synthesize_dialogue

    turns = parse_script("小王: (请用非常快的语速说) 你好\n接着说。\n[S2] hi")
    assert [(t.speaker, t.text, t.instruction) for t in turns] == [("小王", "你好 接着说。", "请用非常快的语速说"),
                                                                    ("S2", "hi", "")]
    service.save_voice("小王", str(ZERO_SHOT_PROMPT), ZERO_SHOT_TRANSCRIPT)
    result = synthesize_dialogue(service, "小王: (请用非常快的语速说) 你好。", seed=1)
    assert result.turns[0].voice == "小王" and result.audio_seconds > 0.3
    with pytest.raises(UserInputError, match="names no speaker"):
        parse_script("no speaker here")
    with pytest.raises(VoiceNotFound, match="no saved voice 'S9'"):
        synthesize_dialogue(service, "[S9] 你好")
    with pytest.raises(UserInputError, match="out of range"):
        synthesize_dialogue(service, "小王: 你好", gap=60)


# ---- history ----------------------------------------------------------------------------------------

def test_history_lists_results_newest_first_after_a_restart(service, engine, tmp_path):
    from cosyvoice.ui.voices import history_rows

    service.save_voice("narrator", str(ZERO_SHOT_PROMPT), ZERO_SHOT_TRANSCRIPT)
    first = service.synthesize(SynthesisRequest(text="第一句话。", prompt_wav=str(ZERO_SHOT_PROMPT),
                                                prompt_text=ZERO_SHOT_TRANSCRIPT, seed=3))
    second = service.synthesize(SynthesisRequest(text="第二句话。", mode="instruct", voice="narrator",
                                                 instruct_text="请用非常快的语速说", seed=4))
    restarted = SynthesisService(engine, ServiceConfig(outputs_dir=tmp_path / "outputs",
                                                       voices_dir=tmp_path / "voices"))
    rows, records = history_rows(restarted)
    assert [r["file"] for r in records] == [second.path.name, first.path.name]
    assert rows[0][1:5] == ["instruct", "narrator", "第二句话。", 4] and rows[1][2] == "(upload)"
    assert records[0]["instruct_text"] == "请用非常快的语速说"
    assert abs(records[1]["duration"] - first.audio_seconds) < 0.001
    first.path.unlink()            # a result removed from outputs/ leaves the history with it
    assert [r["file"] for r in history_rows(restarted)[1]] == [second.path.name]
    from cosyvoice.service.dialogue import synthesize_dialogue

    dialogue = synthesize_dialogue(restarted, "[A] 你好。\n[B] 再见。", {"A": "narrator", "B": "narrator"}, seed=1)
    rows, records = history_rows(restarted)
    assert [r["file"] for r in records] == [dialogue.path.name, second.path.name]      # turns fold into it
    assert rows[0][1:3] == ["dialogue", "narrator"]


# ---- the neural engine: its features survive the library bit for bit ---------------------------------

def test_cosyvoice3_features_round_trip_through_the_library(tmp_path):
    import torch

    from cosyvoice.engines.cosyvoice3 import CosyVoice3Engine
    from conftest import FIXTURE
    from tiny_onnx import make_tiny_model_dir

    torch.set_num_threads(2)
    engine = CosyVoice3Engine(make_tiny_model_dir(FIXTURE, tmp_path / "model"), device="cpu", precision="fp32")
    config = ServiceConfig(outputs_dir=tmp_path / "outputs", voices_dir=tmp_path / "voices", max_piece_units=200)
    service = SynthesisService(engine, config)
    upload = service.synthesize(SynthesisRequest(text="你好。", prompt_wav=str(ZERO_SHOT_PROMPT),
                                                 prompt_text=ZERO_SHOT_TRANSCRIPT, seed=8))
    entry = service.save_voice("neural", str(ZERO_SHOT_PROMPT), ZERO_SHOT_TRANSCRIPT)
    assert engine.feature_identity().startswith("cosyvoice3/model/")
    loaded, notice = service.library.load_voice(entry, engine, None)
    fresh = engine.prepare_voice(service.library.stored_audio(entry), None)
    assert notice is None
    for name in ("speech_tokens", "prompt_mel", "embedding"):
        assert torch.equal(getattr(loaded.features, name), getattr(fresh.features, name)), name
    restarted = SynthesisService(engine, config)
    saved = restarted.synthesize(SynthesisRequest(text="你好。", voice="neural", seed=8))
    assert np.array_equal(samples(upload), samples(saved))
