"""The causal HiFT vocoder reproduces the official waveforms, streams without seams and loads strictly."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from cosyvoice.engines.cosyvoice3.config import FlowConfig, HiFTConfig
from cosyvoice.engines.cosyvoice3.hift import CausalHiFT, load_hift
from cosyvoice.engines.cosyvoice3.noise import constructor_noise
from cosyvoice.engines.cosyvoice3.yaml_values import load_yaml_values
from cosyvoice.errors import ModelDirError
from cosyvoice.parity import float64_tolerance, load_case
from conftest import FIXTURE


@pytest.fixture(scope="module")
def values() -> dict:
    return load_yaml_values(FIXTURE / "cosyvoice3.yaml")


@pytest.fixture(scope="module")
def noise(values: dict):
    return constructor_noise(FlowConfig.from_yaml(values), HiFTConfig.from_yaml(values))


@pytest.fixture(scope="module")
def hift(values: dict):
    torch.set_num_threads(2)
    return load_hift(FIXTURE, HiFTConfig.from_yaml(values), "cpu", torch.float32)


def _max_err(ours: torch.Tensor, expected: torch.Tensor) -> float:
    assert ours.shape == expected.shape
    return (ours.double() - expected.double()).abs().max().item()


@pytest.mark.parametrize("case_name", ["hift_finalize", "hift_stream_chunk"])
def test_matches_official_waveform_and_source(hift, noise, case_name: str) -> None:
    case = load_case(FIXTURE, f"{case_name}.pt")
    speech, source = hift.inference(case["mel"], noise, finalize=case["finalize"])
    assert speech.dtype == torch.float32
    assert _max_err(speech, case["speech"]) <= float64_tolerance(FIXTURE, case_name, "speech")
    assert _max_err(source, case["source"]) <= float64_tolerance(FIXTURE, case_name, "source")
    # the waveform is not trivially small: the tolerance is meaningful against it
    assert case["speech"].abs().max() > 20 * float64_tolerance(FIXTURE, case_name, "speech")


def test_f0_is_the_official_float32_f0(hift) -> None:
    case = load_case(FIXTURE, "hift_finalize.pt")
    with torch.inference_mode():
        f0 = hift.predict_f0(case["mel"], finalize=True)
    assert f0.dtype == torch.float64
    assert torch.equal(f0.float(), case["f0"])
    assert torch.allclose(f0, case["f0_float64"], rtol=1e-12, atol=0)


def test_streaming_chunk_equals_the_start_of_the_full_waveform(hift, noise) -> None:
    # A chunk call (last frames as look-ahead) must produce the same samples as the one-shot call,
    # otherwise streamed audio has clicks at chunk borders.
    mel = load_case(FIXTURE, "flow_nonstream.pt")["mel"]
    full, full_source = hift.inference(mel, noise, finalize=True)
    for n_frames in (20, 53):
        chunk, chunk_source = hift.inference(mel[:, :, :n_frames], noise, finalize=False)
        assert chunk.shape == (1, 480 * (n_frames - 8))
        assert chunk_source.shape == (1, 1, 480 * (n_frames - 3))
        assert _max_err(chunk, full[:, :chunk.shape[1]]) < 1e-4
        assert torch.equal(chunk_source, full_source[:, :, :chunk_source.shape[2]])


def test_does_not_use_or_advance_the_global_rng(hift, noise) -> None:
    mel = load_case(FIXTURE, "hift_finalize.pt")["mel"][:, :, :20]
    torch.manual_seed(1)
    first, _ = hift.inference(mel, noise, finalize=True)
    state = torch.get_rng_state()
    torch.manual_seed(2)
    second, _ = hift.inference(mel, noise, finalize=True)
    assert torch.equal(first, second)
    torch.set_rng_state(state)
    hift.inference(mel, noise, finalize=True)
    assert torch.equal(torch.get_rng_state(), state)


def test_config_comes_from_the_yaml(values: dict) -> None:
    config = HiFTConfig.from_yaml(values)
    assert config.base_channels == values["hift"]["base_channels"]
    assert config.f0_cond_channels == values["hift"]["f0_predictor"]["cond_channels"]
    assert config.samples_per_frame == 480
    # keys the yaml leaves out take the official constructor defaults
    bare = HiFTConfig.from_yaml({"hift": {"sampling_rate": 24000}})
    assert (bare.base_channels, bare.upsample_rates, bare.n_fft) == (512, (8, 8), 16)


def _model_dir_copy(tmp_path: Path, hift_state: dict | None = None, yaml_edit=None) -> Path:
    target = tmp_path / "model"
    target.mkdir()
    text = (FIXTURE / "cosyvoice3.yaml").read_text()
    if yaml_edit is not None:
        text = yaml_edit(text)
    (target / "cosyvoice3.yaml").write_text(text)
    if hift_state is None:
        shutil.copy(FIXTURE / "hift.pt", target / "hift.pt")
    else:
        torch.save(hift_state, target / "hift.pt")
    return target


def test_old_style_weight_norm_keys_load_to_the_same_vocoder(tmp_path: Path, hift, noise) -> None:
    state = torch.load(FIXTURE / "hift.pt", map_location="cpu")
    renamed = {}
    for key, value in state.items():
        key = key.replace(".parametrizations.weight.original0", ".weight_g")
        renamed[key.replace(".parametrizations.weight.original1", ".weight_v")] = value
    model_dir = _model_dir_copy(tmp_path, renamed)
    other = load_hift(model_dir, HiFTConfig.from_yaml(load_yaml_values(model_dir / "cosyvoice3.yaml")))
    mel = load_case(FIXTURE, "hift_finalize.pt")["mel"][:, :, :16]
    assert torch.equal(other.inference(mel, noise, finalize=True)[0], hift.inference(mel, noise, finalize=True)[0])


def test_checkpoint_that_does_not_fit_the_yaml_is_a_model_dir_error(tmp_path: Path) -> None:
    model_dir = _model_dir_copy(tmp_path, yaml_edit=lambda text: text.replace("base_channels: 64", "base_channels: 128"))
    with pytest.raises(ModelDirError, match="hift.pt"):
        load_hift(model_dir, HiFTConfig.from_yaml(load_yaml_values(model_dir / "cosyvoice3.yaml")))


def test_missing_tensor_is_a_model_dir_error(tmp_path: Path) -> None:
    state = torch.load(FIXTURE / "hift.pt", map_location="cpu")
    del state["conv_post.bias"]
    model_dir = _model_dir_copy(tmp_path, state)
    with pytest.raises(ModelDirError, match="conv_post.bias"):
        load_hift(model_dir, HiFTConfig.from_yaml(load_yaml_values(model_dir / "cosyvoice3.yaml")))


def test_unsupported_harmonic_count_is_refused(values: dict) -> None:
    hift_values = dict(values["hift"], nb_harmonics=7)
    with pytest.raises(ModelDirError, match="nb_harmonics"):
        HiFTConfig.from_yaml({"hift": hift_values})


def test_released_sizes_build_and_run(values: dict, noise) -> None:
    config = HiFTConfig.from_yaml({"hift": dict(values["hift"], base_channels=512,
                                                f0_predictor=dict(values["hift"]["f0_predictor"], cond_channels=512))})
    model = CausalHiFT(config).eval()
    model.f0_predictor.double()
    mel = load_case(FIXTURE, "hift_finalize.pt")["mel"][:, :, :12]
    speech, source = model.inference(mel, noise, finalize=True)
    assert speech.shape == (1, 12 * 480) and source.shape == (1, 1, 12 * 480)
    assert torch.isfinite(speech).all() and speech.abs().max() <= config.audio_limit


def test_time_major_and_plain_layouts_give_the_same_waveform(values: dict, hift, noise) -> None:
    # CPU runs time-major weights/activations; other devices keep the plain layout. Both must agree.
    plain = load_hift(FIXTURE, HiFTConfig.from_yaml(values), "cpu", torch.float32)
    for module in plain.modules():
        if isinstance(module, torch.nn.Conv1d):
            module.weight.data = module.weight.data.contiguous()
    mel = load_case(FIXTURE, "hift_finalize.pt")["mel"][:, :, :24]
    assert hift.conv_pre.weight.stride(1) == 1 and plain.conv_pre.weight.stride(2) == 1
    for finalize in (True, False):
        ours, _ = hift.inference(mel, noise, finalize=finalize)
        other, _ = plain.inference(mel, noise, finalize=finalize)
        assert _max_err(ours, other) < 1e-5
