"""Tolerant reading of the voice library (issue 22 item 5, issue 18 item 8): an entry that cannot be
read is listed as broken with the reason, never a 500 for the list; lookups do not re-read every
voice.json; a save that crashed leaves no temp folder after the next start."""
from __future__ import annotations

import json
import os
import time
from unittest import mock

import httpx
import pytest

from conftest import ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT, start_app, stop_app
from cosyvoice.voices import library as voices_module
from cosyvoice.voices.library import VoiceLibrary
from voice_http import error_message, health_stays_fast, list_voices, log_lines, post_voice, speech

DAMAGE = {
    "created not a date": lambda meta: meta.update(created="not-a-date"),
    "duration NaN text": lambda meta: meta.update(duration="NaN"),
    "duration inf text": lambda meta: meta.update(duration="inf"),
    "duration NaN literal": lambda meta: meta.update(duration=float("nan")),
    "duration 1e400": lambda meta: meta.update(duration=10**400),
    "duration not a number": lambda meta: meta.update(duration=[1]),
    "sample_rate negative": lambda meta: meta.update(sample_rate=-1),
    "name not text": lambda meta: meta.update(name=7),
}


def damage(folder, case: str) -> None:
    path = folder / "voice.json"
    if case == "bad json":
        path.write_text("{not json")
    elif case == "deep json":
        path.write_text("[" * 30000 + "]" * 30000)
    elif case == "missing recording":
        (folder / "prompt.wav").unlink()
    else:
        meta = json.loads(path.read_text())
        DAMAGE[case](meta)
        path.write_text(json.dumps(meta, allow_nan=True, default=str) if case != "duration 1e400" else
                        json.dumps(meta).replace(str(10**400), "1e400"))


CASES = [*DAMAGE, "bad json", "deep json", "missing recording"]


@pytest.mark.parametrize("case", CASES)
def test_a_damaged_entry_is_listed_as_broken_with_the_reason(tmp_path, case):
    library = VoiceLibrary(tmp_path / "voices")
    good = library.add("good", ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT)
    bad = library.add("bad", ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT)
    damage(bad.folder, case)
    library._index_stamp = None                    # a hand edit: seen at the next refresh
    entries = {e.id: e for e in library.entries()}
    assert not entries[good.id].broken and entries[bad.id].broken and entries[bad.id].problem
    assert [e.id for e in library.usable_entries()] == [good.id]
    library.delete(bad.id)                         # a broken voice can still be deleted by its id
    assert [e.id for e in library.entries()] == [good.id]


def test_lookups_do_not_reread_every_voice_json(tmp_path):
    library = VoiceLibrary(tmp_path / "voices")
    saved = [library.add(f"voice {n}", ZERO_SHOT_PROMPT) for n in range(3)]
    library.entries()
    with mock.patch.object(voices_module, "_entry_from_meta", wraps=voices_module._entry_from_meta) as parsed:
        for _ in range(20):
            assert library.resolve("voice 1").id == saved[1].id and library.get(saved[2].id)
        assert parsed.call_count == 0
        other_process = VoiceLibrary(tmp_path / "voices")     # a CLI rename is seen by the server's library
        other_process.rename(saved[0].id, "renamed")
        assert library.resolve("renamed").id == saved[0].id and parsed.call_count >= 3


def test_a_crashed_save_leaves_no_temp_folder_after_the_next_start(tmp_path):
    root = tmp_path / "voices"
    VoiceLibrary(root).add("kept", ZERO_SHOT_PROMPT)
    crashed = root / ".tmp-crashed"                # what a save killed before its rename leaves
    crashed.mkdir()
    (crashed / "prompt.wav").write_bytes(b"RIFF....")
    (root / ".trash-voice_aaaaaaaaaaaa-123456").mkdir()
    old = time.time() - 10
    os.utime(crashed, (old, old))
    library = VoiceLibrary(root)                   # what start-up does
    assert sorted(p.name for p in root.iterdir() if p.name.startswith((".tmp", ".trash"))) == []
    assert [e.name for e in library.entries()] == ["kept"]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("voice_reading")
    running = start_app(tmp, "--engine", "lite", "--voices-dir", str(tmp / "voices"))
    running.voices_dir = tmp / "voices"
    yield running
    stop_app(running)


@pytest.mark.parametrize("case", ["created not a date", "duration NaN text", "duration inf text", "bad json"])
def test_one_bad_voice_json_never_takes_the_list_down(app, case):
    with health_stays_fast(app):
        slug = case.replace(" ", "-")
        good = post_voice(app, f"good {slug}", f"rd-good-{slug}")
        bad = post_voice(app, f"bad {slug}", f"rd-bad-{slug}")
        assert good.status_code == bad.status_code == 201
        bad_id = bad.json()["id"]
        damage(app.voices_dir / bad_id, case)
        os.utime(app.voices_dir)                   # as a restore or hand edit would
        listed = {v["id"]: v for v in list_voices(app)}
        assert listed[good.json()["id"]]["status"] == "ok"
        assert listed[bad_id]["status"] == "broken" and listed[bad_id]["problem"]
        assert "broken voice folder" in app.log_text() and bad_id in app.log_text()
        refused = speech(app, bad_id, f"rd-use-{slug}")
        assert refused.status_code == 400 and "damaged on disk" in error_message(refused, f"rd-use-{slug}")
        assert log_lines(app, f"rd-use-{slug}", "WARNING")
        assert speech(app, good.json()["id"], f"rd-ok-{slug}").status_code == 200
        deleted = httpx.delete(f"{app.url}/v1/audio/voices/{bad_id}", timeout=30)
        assert deleted.status_code == 200 and bad_id not in [v["id"] for v in list_voices(app)]
