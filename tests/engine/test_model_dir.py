"""Model-dir completeness check, its cheap identity, and the download command's failure paths."""
from __future__ import annotations

import hashlib
import shutil
import sys
import types
from pathlib import Path

import pytest

from cosyvoice.engines.cosyvoice3 import download
from cosyvoice.engines.cosyvoice3 import model_dir as md
from tiny_onnx import make_tiny_model_dir
from cosyvoice.errors import ModelDirError
from conftest import FIXTURE


@pytest.fixture
def complete_dir(tmp_path) -> Path:
    """A real copy (not links) so files can be removed and edited."""
    linked = make_tiny_model_dir(FIXTURE, tmp_path / "linked")
    copy = tmp_path / "model"
    shutil.copytree(linked, copy, symlinks=False)
    return copy


def test_complete_dir_passes(complete_dir):
    assert md.missing_files(complete_dir) == []
    assert md.is_complete(complete_dir)
    assert md.check_model_dir(complete_dir) == complete_dir


def test_one_message_lists_everything_missing_and_how_to_get_it(complete_dir):
    (complete_dir / "campplus.onnx").unlink()
    (complete_dir / "CosyVoice-BlankEN" / "vocab.json").unlink()
    (complete_dir / "hift.pt").write_bytes(b"")               # an interrupted download
    assert md.missing_files(complete_dir) == ["hift.pt", "campplus.onnx", "CosyVoice-BlankEN/vocab.json"]
    assert not md.is_complete(complete_dir)
    with pytest.raises(ModelDirError) as info:
        md.check_model_dir(complete_dir)
    message = str(info.value)
    for name in ("hift.pt", "campplus.onnx", "CosyVoice-BlankEN/vocab.json"):
        assert name in message
    assert f"python -m cosyvoice download --model-dir {complete_dir}" in message


def test_absent_dir_and_the_bare_fixture_are_incomplete(tmp_path):
    with pytest.raises(ModelDirError, match="does not exist.*python -m cosyvoice download"):
        md.check_model_dir(tmp_path / "nope")
    assert not md.is_complete(tmp_path / "nope")
    # The fixture has everything except the onnx models.
    assert md.missing_files(FIXTURE) == ["campplus.onnx", "speech_tokenizer_v3.onnx"]


def test_identity_names_the_model_and_changes_with_its_files(complete_dir):
    first = md.model_identity(complete_dir)
    assert first["name"] == "model" and first["complete"]
    assert first["yaml_sha1"] == hashlib.sha1((complete_dir / "cosyvoice3.yaml").read_bytes()).hexdigest()
    assert first["total_bytes"] == sum((complete_dir / n).stat().st_size for n in md.REQUIRED_FILES)

    with (complete_dir / "flow.pt").open("ab") as f:     # a replaced checkpoint: new size and mtime
        f.write(b"\0")
    second = md.model_identity(complete_dir)
    assert second["files_sha1"] != first["files_sha1"]
    assert second["yaml_sha1"] == first["yaml_sha1"]



def test_a_chosen_llm_checkpoint_stands_in_for_llm_pt(complete_dir):
    shutil.copy(complete_dir / "llm.pt", complete_dir / "llm.rl.pt")
    (complete_dir / "llm.pt").unlink()
    assert md.missing_files(complete_dir) == ["llm.pt"]
    assert md.missing_files(complete_dir, llm_weights="llm.rl.pt") == []
    assert md.check_model_dir(complete_dir, llm_weights="llm.rl.pt") == complete_dir
    with pytest.raises(ModelDirError, match="missing: llm.dpo.pt"):
        md.check_model_dir(complete_dir, llm_weights="llm.dpo.pt")
    # the identity follows the file that is loaded
    before = md.model_identity(complete_dir, llm_weights="llm.rl.pt")
    assert before["complete"]
    with (complete_dir / "llm.rl.pt").open("ab") as f:
        f.write(b"\0")
    assert md.model_identity(complete_dir, llm_weights="llm.rl.pt")["files_sha1"] != before["files_sha1"]

def test_identity_is_cached_and_reads_no_weights(complete_dir, monkeypatch):
    md.model_identity(complete_dir)
    opened: list[str] = []
    real_read_bytes = Path.read_bytes

    def spy(self):
        opened.append(self.name)
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", spy)
    monkeypatch.setattr("builtins.open", lambda *a, **k: pytest.fail(f"opened {a[0]}"))
    for _ in range(3):
        assert md.model_identity(complete_dir)["complete"]
    assert opened == []


# --- python -m cosyvoice download -------------------------------------------------------------

def _hide(monkeypatch, *modules: str) -> None:
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)          # import raises ImportError


def test_download_without_any_hub_library_says_what_to_install(tmp_path, monkeypatch, capsys):
    _hide(monkeypatch, "modelscope", "huggingface_hub")
    assert download.main(["--model-dir", str(tmp_path / "m")]) == download.EXIT_NO_LIBRARY
    err = capsys.readouterr().err
    assert "pip install modelscope" in err and "pip install huggingface_hub" in err


def test_download_from_a_named_hub_that_is_not_installed(tmp_path, monkeypatch, capsys):
    _hide(monkeypatch, "modelscope")
    assert download.main(["--model-dir", str(tmp_path / "m"), "--source", "modelscope"]) == download.EXIT_NO_LIBRARY
    assert "pip install modelscope" in capsys.readouterr().err


def _fake_hub(monkeypatch, name: str, behaviour) -> list:
    calls: list = []

    def snapshot_download(*args, **kwargs):
        calls.append((args, kwargs))
        return behaviour(*args, **kwargs)

    monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(snapshot_download=snapshot_download))
    return calls


def test_download_offline_is_reported_as_offline(tmp_path, monkeypatch, capsys):
    _hide(monkeypatch, "modelscope")

    def unreachable(*args, **kwargs):
        try:
            raise OSError("[Errno -3] Temporary failure in name resolution")
        except OSError as err:
            raise ConnectionError("Max retries exceeded with url: /api/models") from err

    calls = _fake_hub(monkeypatch, "huggingface_hub", unreachable)
    assert download.main(["--model-dir", str(tmp_path / "m")]) == download.EXIT_FAILED
    err = capsys.readouterr().err
    assert "offline" in err and "huggingface" in err
    assert calls[0][1]["repo_id"] == download.REPO_ID
    assert Path(calls[0][1]["local_dir"]) == tmp_path / "m"
    assert not (tmp_path / "m").exists()


def test_download_that_leaves_files_missing_fails(tmp_path, monkeypatch, capsys):
    _hide(monkeypatch, "huggingface_hub")

    def partial(model_id, local_dir):
        (Path(local_dir) / "cosyvoice3.yaml").write_text("sample_rate: 24000\n")

    calls = _fake_hub(monkeypatch, "modelscope", partial)
    assert download.main(["--model-dir", str(tmp_path / "m")]) == download.EXIT_FAILED
    assert calls[0][0] == (download.REPO_ID,)
    assert "llm.pt" in capsys.readouterr().err


def test_download_skips_a_complete_dir(complete_dir, monkeypatch, capsys):
    calls = _fake_hub(monkeypatch, "huggingface_hub", lambda *a, **k: pytest.fail("should not download"))
    _hide(monkeypatch, "modelscope")
    assert download.main(["--model-dir", str(complete_dir)]) == download.EXIT_OK
    assert calls == [] and "already complete" in capsys.readouterr().out
