"""A full voices/ (issue 22 item 13): saving is refused with StorageFullError (HTTP 507) and a clear
message, nothing half-written is left, the voices already saved are unchanged, and the server keeps
serving. The disk is real: a small tmpfs mounted for the test (CI runs as root) and filled up."""
from __future__ import annotations

import errno
import os
import subprocess

import pytest

from conftest import AUDIO, ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT, start_app, stop_app
from cosyvoice.errors import StorageFullError
from cosyvoice.server.openai_api import error_body
from cosyvoice.voices.library import VoiceLibrary
from voice_http import error_message, health_stays_fast, log_lines, post_voice, speech, voice_state


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mount = tmp_path / "voices"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder) -> None:
    """Write a hidden filler file until the disk says it is full."""
    fd = os.open(folder / ".filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, bytes(1 << 16))
    except OSError as err:
        assert err.errno == errno.ENOSPC
    finally:
        os.close(fd)


def leftovers(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if ".tmp" in str(p) or ".partial" in str(p))


def test_library_on_a_full_disk_refuses_and_leaves_nothing(small_disk):
    library = VoiceLibrary(small_disk)
    kept = library.add("kept", ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT)
    before = (kept.folder / "voice.json").read_bytes()
    fill(small_disk)
    with pytest.raises(StorageFullError, match="is full.*nothing of it was kept") as refused:
        library.add("second", AUDIO / "cross_lingual_prompt.wav")
    status, body = error_body(refused.value, "r1")                  # what the API would answer
    assert status == 507 and body["error"]["code"] == "insufficient_storage"
    with pytest.raises(StorageFullError):
        library.rename("kept", "renamed")
    assert leftovers(small_disk) == [] and [e.name for e in library.entries()] == ["kept"]
    assert (kept.folder / "voice.json").read_bytes() == before
    (small_disk / ".filler").unlink()
    assert library.add("second", AUDIO / "cross_lingual_prompt.wav").name == "second"


def test_v1_save_on_a_full_voices_dir_is_a_507_with_the_message(tmp_path, small_disk):
    app = start_app(tmp_path, "--engine", "lite", "--voices-dir", str(small_disk))
    try:
        with health_stays_fast(app):
            assert post_voice(app, "kept", "full-kept").status_code == 201
            before = voice_state(app)
            fill(small_disk)
            refused = post_voice(app, "second", "full-save")
            assert refused.status_code == 507 and refused.json()["error"]["code"] == "insufficient_storage"
            message = error_message(refused, "full-save")
            assert "is full" in message and "Free some space" in message
            errors = log_lines(app, "full-save", "ERROR")
            assert any("voice not saved" in line and "is full" in line for line in errors), errors
            assert leftovers(small_disk) == [] and voice_state(app) == before
            assert speech(app, "kept", "full-speak").status_code == 200       # still serving from the library
            (small_disk / ".filler").unlink()
            assert post_voice(app, "second", "full-again").status_code == 201
    finally:
        stop_app(app)
