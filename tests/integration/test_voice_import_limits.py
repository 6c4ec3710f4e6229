"""Bounded import (issue 22 item 12): every archive member's declared and real size, and every array
inside a features npz (from its .npy header, before loading), are checked against limits; a refusal
is a clear message and nothing is imported; a stored feature file that cannot be read is re-extracted
with a WARNING instead of failing every request."""
from __future__ import annotations

import io
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from conftest import ROOT, ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT, start_app, stop_app
from cosyvoice.voices import archive as voice_archive
from cosyvoice.errors import UserInputError
from cosyvoice.voices.library import IDENTITY_KEY, VoiceLibrary
from voice_http import health_stays_fast, list_voices, log_lines, post_voice, speech

FEATURES = "features/0123456789abcdef.npz"


def npy_declaring(shape: tuple, dtype: str = "<f4", data: bytes = b"") -> bytes:
    """A .npy whose header declares `shape` (and holds only `data`): what a hostile file looks like."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + data


def npz_of(members: dict[str, bytes], compress: bool = True) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
    return buffer.getvalue()


def identity_npy(identity: str = "lite") -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array(identity))
    return buffer.getvalue()


@pytest.fixture
def exported(tmp_path) -> tuple[VoiceLibrary, dict[str, bytes]]:
    library = VoiceLibrary(tmp_path / "voices")
    library.add("source", ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT)
    archive = library.export_zip("source", tmp_path / "source.zip")
    library.delete("source")
    with zipfile.ZipFile(archive) as opened:
        return library, {name: opened.read(name) for name in opened.namelist()}


def write_zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


HOSTILE = {
    # the two: a small zip holding a 3 GiB array, and an npz declaring 10^12 elements
    "3 GiB array": ({FEATURES: npz_of({"a.npy": npy_declaring((3 * 2**30 // 4,))})}, "3,221,225,472|805,306,368"),
    "10^12 elements": ({FEATURES: npz_of({"a.npy": npy_declaring((10**6, 10**6))})}, "1,000,000,000,000"),
    "big real array": ({FEATURES: npz_of({"a.npy": npy_declaring((20 * 2**20,), "|u1", bytes(20 * 2**20))})},
                       "unpacks to 20.0 MB"),
    "object array": ({FEATURES: npz_of({"a.npy": npy_declaring((1,), "|O")})}, "Python objects"),
    "too many arrays": ({FEATURES: npz_of({f"a{n}.npy": npy_declaring((1,)) for n in range(40)})}, "40 arrays"),
    "huge wav": ({"prompt.wav": bytes(40 * 2**20)}, "prompt.wav unpacks to 40.0 MB"),
    "huge voice.json": ({"voice.json": b" " * (2 * 2**20)}, "voice.json unpacks to 2.0 MB"),
    "too many files": ({f"features/{n:016x}.npz": b"" for n in range(20)}, "holds 22 files"),
    "too much in all": ({f"features/{n:016x}.npz": bytes(15 * 2**20) for n in range(5)}, "unpacks to 7"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_archive_is_refused_before_its_bytes_are_made(exported, tmp_path, case):
    library, members = exported
    extra, expected = HOSTILE[case]
    path = write_zip(tmp_path / f"{case}.zip", {**members, **extra})
    before = sorted(p.name for p in library.root.iterdir())
    with pytest.raises(UserInputError, match=expected) as refused:
        library.import_zip(path)
    assert "refused" in str(refused.value) and path.name in str(refused.value)
    assert sorted(p.name for p in library.root.iterdir()) == before      # nothing imported, no temp left
    assert library.entries() == []


def test_an_honest_archive_still_imports(exported, tmp_path):
    library, members = exported
    entry = library.import_zip(write_zip(tmp_path / "ok.zip", members))
    assert entry.name == "source" and library.resolve("source").id == entry.id


def test_the_cli_refuses_a_bomb_with_the_message(exported, tmp_path):
    library, members = exported
    path = write_zip(tmp_path / "bomb.zip", {**members, **HOSTILE["10^12 elements"][0]})
    done = subprocess.run([sys.executable, "-m", "cosyvoice", "voices", "--voices-dir", str(library.root),
                           "import", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "1,000,000,000,000 elements" in done.stderr and "Traceback" not in done.stderr


def test_header_check_reads_no_array_data(tmp_path):
    path = tmp_path / "x.npz"
    path.write_bytes(npz_of({"a.npy": npy_declaring((10**6, 10**6))}))
    with pytest.raises(ValueError, match="limit for one array is 16.0 MB"):
        voice_archive.read_npz(path)


# ---- a stored feature file that cannot be read --------------------------------------------------------
def test_a_voice_whose_features_declare_a_huge_array_is_reextracted_with_a_warning(tmp_path):
    args = ("--engine", "lite", "--voices-dir", str(tmp_path / "voices"))
    app = start_app(tmp_path, *args)
    try:
        created = post_voice(app, "bombed", "lim-create")
        assert created.status_code == 201
        voice_id = created.json()["id"]
        clean = speech(app, voice_id, "lim-clean")
    finally:
        stop_app(app)
    [features] = (tmp_path / "voices" / voice_id / "features").glob("*.npz")
    with np.load(features) as stored:
        identity = str(stored[IDENTITY_KEY])
    features.write_bytes(npz_of({f"{IDENTITY_KEY}.npy": identity_npy(identity),
                                 "a.npy": npy_declaring((10**6, 10**6))}))
    app = start_app(tmp_path, *args)             # the server finds the file as it is on disk
    try:
        with health_stays_fast(app):
            before = list_voices(app)
            response = speech(app, voice_id, "lim-bombed")
            assert response.status_code == 200 and response.content == clean.content
            [warning] = log_lines(app, "lim-bombed", "WARNING")
            assert "stored features could not be read" in warning and "1,000,000,000,000" in warning
            assert "recomputed from the stored recording" in warning
            assert list_voices(app) == before
        with np.load(features) as repaired:      # rewritten, so the next start loads it as it is
            assert "a" not in repaired.files and str(repaired[IDENTITY_KEY]) == identity
    finally:
        stop_app(app)
