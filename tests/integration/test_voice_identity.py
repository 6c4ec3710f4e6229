"""A voice has one identity (issue 22 item 1): ids are reserved, look-alike names are one name, a
lookup resolves once, and deleting by id deletes that voice only. In the library and through /v1."""
from __future__ import annotations

import hashlib
import json
import shutil

import httpx
import pytest

from conftest import AUDIO, ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT, start_app, stop_app
from cosyvoice.errors import UserInputError
from cosyvoice.voices.names import looks_like_id, name_key
from cosyvoice.voices.library import VoiceLibrary, VoiceNameTaken, VoiceNotFound
from voice_http import error_message, health_stays_fast, list_voices, log_lines, post_voice, speech, voice_state

OTHER_PROMPT = AUDIO / "cross_lingual_prompt.wav"           # another speaker: the impostor's recording
LOOK_ALIKES = ["nаrrator",                                   # Cyrillic а
               "ｎａｒｒａｔｏｒ",                                  # full-width
               "NARRATOR", "narrator ", "nαrrαtοr"]          # case, space, Greek α and ο


def plant_voice_named(library_root, source_id: str, name: str) -> str:
    """A voice folder as an older version (or a hand edit) could have left it: a copy of another voice
    with its recording swapped and the given name, written straight to disk."""
    impostor_id = "voice_0123456789ab"
    folder = library_root / impostor_id
    shutil.copytree(library_root / source_id, folder)
    shutil.copy(OTHER_PROMPT, folder / "prompt.wav")
    shutil.rmtree(folder / "features", ignore_errors=True)
    meta = json.loads((folder / "voice.json").read_text())
    meta.update(id=impostor_id, name=name, sha256=hashlib.sha256((folder / "prompt.wav").read_bytes()).hexdigest())
    (folder / "voice.json").write_text(json.dumps(meta))
    return impostor_id


# ---- library level ---------------------------------------------------------------------------------
def test_names_that_read_the_same_are_one_name(tmp_path):
    library = VoiceLibrary(tmp_path / "voices")
    narrator = library.add("narrator", ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT)
    for look_alike in LOOK_ALIKES:
        with pytest.raises(VoiceNameTaken, match="taken"):
            library.add(look_alike, OTHER_PROMPT)
        assert library.resolve(look_alike).id == narrator.id          # and they find the one voice
    other = library.add("storyteller", OTHER_PROMPT)
    with pytest.raises(VoiceNameTaken, match="reads the same as 'narrator'"):
        library.rename(other.id, "nаrrator")
    assert [e.name for e in library.entries()] == ["storyteller", "narrator"]


def test_a_name_can_never_be_an_id(tmp_path):
    library = VoiceLibrary(tmp_path / "voices")
    narrator = library.add("narrator", ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT)
    for name in (narrator.id, narrator.id.upper(), "vоice_5970abcdef12",  # Cyrillic о
                 "ｖｏｉｃｅ_abc", "voice_0"):
        assert looks_like_id(name)
        with pytest.raises(UserInputError, match="looks like a voice id"):
            library.add(name, OTHER_PROMPT)
        with pytest.raises(UserInputError, match="looks like a voice id"):
            library.rename(narrator.id, name)
    assert not looks_like_id("voice over") and library.add("voice over", OTHER_PROMPT).name == "voice over"
    assert name_key("ｎａｒｒａｔｏｒ") == name_key("nаrrator") == name_key("Narrator")


def test_get_is_exact_and_an_old_id_named_voice_cannot_take_over(tmp_path):
    root = tmp_path / "voices"
    library = VoiceLibrary(root)
    narrator = library.add("narrator", ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT)
    impostor_id = plant_voice_named(root, narrator.id, narrator.id)
    assert library.get(narrator.id).name == "narrator"
    assert library.resolve(narrator.id).sha256 == narrator.sha256 != library.get(impostor_id).sha256
    assert library.resolve("narrator").id == narrator.id
    with pytest.raises(VoiceNotFound):
        library.get("narrator")                                   # get takes ids only
    library.delete(narrator.id)
    assert [e.id for e in library.entries()] == [impostor_id]    # the impostor was not the one deleted
    with pytest.raises(VoiceNotFound):
        library.resolve(narrator.id)                              # and its name is never taken as that id


def test_names_left_duplicate_on_disk_are_refused_as_ambiguous(tmp_path):
    root = tmp_path / "voices"
    library = VoiceLibrary(root)
    narrator = library.add("narrator", ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT)
    twin = plant_voice_named(root, narrator.id, "Nаrrator")
    with pytest.raises(UserInputError, match=f"matches 2 saved voices.*{twin}"):
        library.resolve("narrator")
    assert library.resolve(twin).name == "Nаrrator"               # each is still reachable by its id


# ---- through the /v1 API ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("voice_identity")
    running = start_app(tmp, "--engine", "lite", "--voices-dir", str(tmp / "voices"))
    running.voices_dir = tmp / "voices"
    yield running
    stop_app(running)


def test_the_takeover_from_issue_22_is_refused_over_http(app):
    with health_stays_fast(app):
        created = post_voice(app, "narrator", "id-create")
        assert created.status_code == 201, created.text
        narrator_id = created.json()["id"]
        original = speech(app, "narrator", "id-before")
        assert original.status_code == 200 and len(original.content) > 1000
        before = voice_state(app)

        taken = post_voice(app, narrator_id, "id-takeover", prompt=OTHER_PROMPT)
        assert taken.status_code == 400 and taken.json()["error"]["param"] == "name"
        assert "looks like a voice id" in error_message(taken, "id-takeover")
        assert log_lines(app, "id-takeover", "WARNING")
        for n, look_alike in enumerate(["nаrrator", "ｎａｒｒａｔｏｒ"]):
            refused = post_voice(app, look_alike, f"id-lookalike-{n}", prompt=OTHER_PROMPT)
            assert refused.status_code == 409 and refused.json()["error"]["code"] == "voice_name_taken"
            assert narrator_id in error_message(refused, f"id-lookalike-{n}")
            assert log_lines(app, f"id-lookalike-{n}", "WARNING")
        assert voice_state(app) == before                          # nothing added, nothing changed

        for ref in ("narrator", narrator_id):
            again = speech(app, ref, f"id-after-{ref[:8]}")
            assert again.status_code == 200 and again.content == original.content


def test_a_planted_id_named_voice_neither_speaks_nor_is_deleted_for_the_original(app):
    with health_stays_fast(app):
        created = post_voice(app, "announcer", "id-announcer")
        assert created.status_code == 201, created.text
        announcer_id = created.json()["id"]
        original = speech(app, announcer_id, "id-ann-before")
        impostor_id = plant_voice_named(app.voices_dir, announcer_id, announcer_id)
        assert impostor_id in [v["id"] for v in list_voices(app)]  # the server sees the folder at once
        by_id = speech(app, announcer_id, "id-ann-by-id")
        assert by_id.status_code == 200 and by_id.content == original.content

        deleted = httpx.delete(f"{app.url}/v1/audio/voices/{announcer_id}", timeout=30)
        assert deleted.status_code == 200 and deleted.json()["id"] == announcer_id
        ids = [v["id"] for v in list_voices(app)]
        assert announcer_id not in ids and impostor_id in ids
        gone = speech(app, announcer_id, "id-ann-gone")
        assert gone.status_code == 404 and "no saved voice" in error_message(gone, "id-ann-gone")
        assert log_lines(app, "id-ann-gone", "WARNING")
