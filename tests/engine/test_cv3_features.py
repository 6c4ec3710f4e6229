"""Prompt features equal the official frontend's (torchaudio resample + kaldi fbank, whisper, Matcha)."""
from __future__ import annotations

import math
import shutil

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from cosyvoice.engines.cosyvoice3 import features
from cosyvoice.engines.cosyvoice3.config import PromptMelConfig
from cosyvoice.engines.cosyvoice3.yaml_values import load_yaml_values
from cosyvoice.parity import FRONTEND_TOLERANCE, load_case
from cosyvoice.parity import frontend as frontend_parity
from conftest import AUDIO, FIXTURE, ZERO_SHOT_PROMPT


@pytest.fixture(scope="module")
def case() -> dict:
    torch.set_num_threads(2)
    return load_case(FIXTURE, "frontend_features.pt")


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a.double() - b.double()).abs().max().item()


def test_loaded_and_resampled_waveforms_are_bit_identical(case):
    assert case["wav_file"] == ZERO_SHOT_PROMPT.name
    assert torch.equal(features.load_mono(str(ZERO_SHOT_PROMPT), 16000), case["wav_16k"])
    assert torch.equal(features.load_mono(str(ZERO_SHOT_PROMPT), 24000), case["wav_24k"])


def test_resample_keeps_a_tone_and_follows_the_length_rule():
    sr_in, sr_out, hz = 44100, 16000, 440.0
    n = 44100 * 2 + 7
    t = np.arange(n) / sr_in
    stereo = torch.from_numpy(np.stack([np.sin(2 * np.pi * hz * t), 0.5 * np.sin(2 * np.pi * hz * t)]).astype(np.float32))
    out = features.resample(stereo, sr_in, sr_out)
    assert out.shape == (2, math.ceil(n * 160 / 441))
    expected = np.sin(2 * np.pi * hz * np.arange(out.shape[1]) / sr_out)
    middle = slice(200, out.shape[1] - 200)            # away from the zero-padded edges
    assert np.abs(out[0, middle].numpy() - expected[middle]).max() < 2e-3
    assert np.abs(out[1, middle].numpy() - 0.5 * expected[middle]).max() < 1e-3
    assert features.resample(stereo, 16000, 16000) is stereo


def test_kaldi_fbank_matches_official_except_float32_fft_noise(case):
    ours = features.campplus_input(features.kaldi_fbank(case["wav_16k"]))
    assert ours.shape == case["campplus_fbank"].shape == (1, 1 + (case["wav_16k"].shape[1] - 400) // 160, 80)
    err = (ours.double() - case["campplus_fbank"].double()).abs()
    # The FFT's float32 rounding depends on MKL's code path; it shows in the log of the lowest
    # bins (< ~250 Hz), which pre-emphasis and DC removal leave near silent. Above them the
    # default path must agree to the frontend tolerance; the exact check (MKL_CBWR=COMPATIBLE,
    # like the fixture) is in test_frontend_parity_passes_and_reports_missing_audio.
    assert err[..., 8:].max().item() <= FRONTEND_TOLERANCE
    assert err.max().item() < 5e-3
    assert features.kaldi_fbank(torch.zeros(1, 399)).shape == (0, 80)


def test_whisper_log_mel_matches_official(case):
    ours = features.whisper_log_mel(case["wav_16k"], n_mels=128)
    assert ours.shape[2] == int(case["whisper_logmel_len"][0])
    assert _max_err(ours, case["whisper_logmel"]) <= FRONTEND_TOLERANCE


def test_prompt_mel_matches_official_with_yaml_settings(case):
    config = PromptMelConfig.from_yaml(load_yaml_values(FIXTURE / "cosyvoice3.yaml"))
    ours = features.prompt_mel_from_config(case["wav_24k"], config).transpose(1, 2)
    assert ours.shape[1] == int(case["prompt_mel_24k_len"][0])
    assert _max_err(ours, case["prompt_mel_24k"]) <= FRONTEND_TOLERANCE


def test_prompt_mel_settings_come_from_the_yaml(tmp_path, case):
    text = (FIXTURE / "cosyvoice3.yaml").read_text()
    text = text.replace("num_mels: 80", "num_mels: 64").replace("hop_size: 480", "hop_size: 240")
    (tmp_path / "cosyvoice3.yaml").write_text(text)
    config = PromptMelConfig.from_yaml(load_yaml_values(tmp_path / "cosyvoice3.yaml"))
    assert (config.n_mels, config.hop, config.n_fft, config.sample_rate) == (64, 240, 1920, 24000)
    mel = features.prompt_mel_from_config(case["wav_24k"], config)
    assert mel.shape == (1, 64, case["wav_24k"].shape[1] // 240)


@pytest.mark.parametrize("sr,n_fft,n_mels,fmin,fmax", [(16000, 400, 128, 0.0, None), (24000, 1920, 80, 0.0, None),
                                                       (22050, 1024, 80, 30.0, 8000.0)])
def test_slaney_filters_equal_librosa(sr, n_fft, n_mels, fmin, fmax):
    ours = features.slaney_mel_filters(sr, n_fft, n_mels, fmin, fmax).numpy()
    assert np.array_equal(ours, librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax))


def test_stereo_file_is_averaged(tmp_path):
    mono, sr = sf.read(str(ZERO_SHOT_PROMPT), dtype="float32")
    sf.write(str(tmp_path / "stereo.wav"), np.stack([mono, np.zeros_like(mono)], axis=1), sr, subtype="FLOAT")
    stereo = features.load_mono(str(tmp_path / "stereo.wav"), sr)
    assert torch.allclose(stereo, torch.from_numpy(mono)[None] / 2)


def test_align_prompt_keeps_two_frames_per_token():
    feat, tokens = torch.zeros(1, 174, 80), torch.arange(90)[None]
    cut_feat, cut_tokens = features.align_prompt(feat, tokens, token_mel_ratio=2)
    assert cut_tokens.shape[1] == 87 and cut_feat.shape[1] == 174
    cut_feat, cut_tokens = features.align_prompt(feat, tokens[:, :80], token_mel_ratio=2)
    assert cut_tokens.shape[1] == 80 and cut_feat.shape[1] == 160


def test_frontend_parity_passes_and_reports_missing_audio(tmp_path):
    results = list(frontend_parity.run(FIXTURE, AUDIO))
    assert {r.name.split(".")[1] for r in results} == {
        "wav_16k", "wav_24k", "campplus_fbank", "whisper_logmel", "whisper_logmel_len",
        "prompt_mel_24k", "prompt_mel_24k_len"}
    assert all(r.passed for r in results), [r.line() for r in results if not r.passed]

    missing = list(frontend_parity.run(FIXTURE, tmp_path))
    assert len(missing) == 1 and not missing[0].passed
    assert "zero_shot_prompt.wav" in missing[0].note and "FAIL" in missing[0].line()


def test_frontend_parity_fails_on_a_different_recording(tmp_path):
    shutil.copy(AUDIO / "f5_basic_ref_en.wav", tmp_path / ZERO_SHOT_PROMPT.name)
    results = list(frontend_parity.run(FIXTURE, tmp_path))
    assert not all(r.passed for r in results)
