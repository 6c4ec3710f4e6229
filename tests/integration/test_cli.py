"""`python -m cosyvoice …` goes through the same service as the UI."""
from __future__ import annotations

import subprocess

import numpy as np
import soundfile as sf

from conftest import AUDIO, PYTHON, ROOT, ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT


def run_cli(*args: str, tmp) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "cosyvoice", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def common(tmp) -> list[str]:
    return ["--engine", "lite", "--outputs-dir", str(tmp / "outputs"), "--log-dir", str(tmp / "logs")]


def test_synth_modes_print_the_saved_path(tmp_path):
    out = tmp_path / "out.wav"
    runs = [
        ["--mode", "zero_shot", "--text", "今天天气很好。", "--prompt-wav", str(ZERO_SHOT_PROMPT),
         "--prompt-text", ZERO_SHOT_TRANSCRIPT, "--seed", "1", "--out", str(out)],
        ["--mode", "cross_lingual", "--text", "Good morning, everyone.",
         "--prompt-wav", str(AUDIO / "cross_lingual_prompt.wav"), "--seed", "1"],
        ["--mode", "instruct", "--instruct", "请用非常快的语速说", "--text", "今天天气很好。",
         "--prompt-wav", str(ZERO_SHOT_PROMPT), "--seed", "1"],
    ]
    for args in runs:
        result = run_cli("synth", *args, *common(tmp_path), tmp=tmp_path)
        assert result.returncode == 0, result.stderr
        path = result.stdout.strip().splitlines()[-1]
        data, rate = sf.read(path)
        assert rate == 24000 and len(data) > rate // 2 and np.abs(data).max() > 0.05
    assert out.exists() and len(list((tmp_path / "outputs").glob("output_*.wav"))) == 3
    log = (tmp_path / "logs" / "runtime.log").read_text()
    assert log.count("SUCCESS") == 3


def test_synth_reports_bad_input_and_exits_non_zero(tmp_path):
    result = run_cli("synth", "--text", "你好", "--prompt-wav", str(tmp_path / "missing.wav"),
                     "--prompt-text", "x", *common(tmp_path), tmp=tmp_path)
    assert result.returncode == 1
    assert "not found" in result.stderr and "Traceback" not in result.stderr


def test_text_command_shows_normalized_markup_and_pieces(tmp_path):
    result = run_cli("text", "重庆的气温是-3.5℃。I {M AY0 N UW1 T} it.", tmp=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "零下三点五摄氏度" in result.stdout
    assert "[ch][óng]" in result.stdout and "[M][AY0][N][UW1][T]" in result.stdout
    bad = run_cli("text", "我[xx9]你", tmp=tmp_path)
    assert bad.returncode != 0 and "[xx9]" in (bad.stdout + bad.stderr)
