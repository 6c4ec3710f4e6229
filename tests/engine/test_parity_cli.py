"""`python -m cosyvoice.parity` proves our engine equals the official code on every fixture case."""
from __future__ import annotations

import json
import subprocess

import torch

from conftest import AUDIO, FIXTURE, PYTHON, ROOT


def run_parity(model_dir, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "cosyvoice.parity", "--model-dir", str(model_dir), "--audio-dir", str(AUDIO),
                           *extra], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_every_public_case_passes():
    result = run_parity(FIXTURE)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if " err " in line]
    assert lines and all(" PASS" in line for line in lines), [l for l in lines if " PASS" not in l]
    reported = {line.split(".")[0] for line in lines}
    cases = {name for name in json.loads((FIXTURE / "cases" / "manifest.json").read_text())}
    assert cases <= reported | {"tokenizer_cases"}, f"cases not checked: {cases - reported}"
    tokenizer_cases = json.loads((FIXTURE / "cases" / "tokenizer_cases.json").read_text())["cases"]
    assert sum(line.startswith("tokenizer.") for line in lines) >= len(tokenizer_cases)


def test_a_wrong_model_fails_and_exits_non_zero(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    for item in FIXTURE.iterdir():
        (model / item.name).symlink_to(item)
    (model / "flow.pt").unlink()
    state = torch.load(FIXTURE / "flow.pt", map_location="cpu", weights_only=True)
    key = next(k for k in state if k.endswith("proj_out.weight"))
    state[key] = state[key] * 1.01
    torch.save(state, model / "flow.pt")
    result = run_parity(model, "--only", "flow")
    assert result.returncode != 0
    assert "flow_nonstream.mel" in result.stdout and "FAIL" in result.stdout
