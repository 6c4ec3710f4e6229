"""Constructor-noise replay: the flow's initial state and the vocoder's sine noise must be the official ones,
otherwise every synthesized waveform differs from the official model's."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from cosyvoice.engines.cosyvoice3 import noise as noise_module
from cosyvoice.engines.cosyvoice3.noise import SINE_NOISE_SAMPLES, constructor_noise
from cosyvoice.engines.cosyvoice3.config import FlowConfig, HiFTConfig
from cosyvoice.engines.cosyvoice3.yaml_values import load_yaml_values
from conftest import FIXTURE


@pytest.fixture(scope="module")
def values() -> dict:
    return load_yaml_values(FIXTURE / "cosyvoice3.yaml")


def _noise(values: dict) -> noise_module.ConstructorNoise:
    return constructor_noise(FlowConfig.from_yaml(values), HiFTConfig.from_yaml(values))


@pytest.fixture(scope="module")
def hift_case() -> dict:
    return torch.load(FIXTURE / "cases" / "hift_finalize.pt", map_location="cpu", weights_only=False)


def test_replay_equals_the_official_noise_bit_for_bit(values: dict, hift_case: dict) -> None:
    noise = _noise(values)
    assert torch.equal(noise.rand_ini, hift_case["noise_rand_ini"])
    expected = hift_case["noise_sine_waves"]
    assert torch.equal(noise.sine_waves_prefix(expected.shape[1]), expected)
    flow_case = torch.load(FIXTURE / "cases" / "flow_nonstream.pt", map_location="cpu", weights_only=False)
    assert noise.flow_z.shape == (1, 80, 15000)
    assert torch.equal(noise.flow_z[:, :, :flow_case["est0_x"].shape[2]], flow_case["est0_x"][:1])


def test_global_rng_is_left_alone(values: dict) -> None:
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    noise = _noise(values)
    noise.sine_waves_prefix(50_000)
    assert torch.equal(torch.get_rng_state(), before)


def test_prefix_grown_in_steps_equals_one_long_draw(values: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    # Streaming calls ask for ever longer prefixes; they must read the same noise a single long call reads.
    monkeypatch.setattr(noise_module, "_GROWTH_SAMPLES", 1000)
    stepped = _noise(values)
    for length in (10, 999, 4321, 4000, 12_345):
        part = stepped.sine_waves_prefix(length)
        assert part.shape == (1, length, 9)
    at_once = _noise(values).sine_waves_prefix(12_345)
    assert torch.equal(stepped.sine_waves_prefix(12_345), at_once)
    assert float(at_once.min()) >= 0.0 and float(at_once.max()) < 1.0  # uniform [0, 1), not Gaussian


def test_draw_sizes_follow_the_yaml(values: dict) -> None:
    """For released layer sizes the replay must consume exactly what torch's own layer constructors consume."""
    released = copy.deepcopy(values)
    released["hift"]["f0_predictor"]["cond_channels"] = 512
    ours = _noise(released)
    flow = released["flow"]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        flow_z = torch.randn(1, 80, 15000)
        nn.Embedding(flow["vocab_size"], flow["input_size"])
        nn.Linear(flow["spk_embed_dim"], flow["output_size"])
        nn.Conv1d(80, 512, 4)
        for _ in range(4):
            nn.Conv1d(512, 512, 3)
        nn.Linear(512, 1)
        rand_ini = torch.rand(1, 9)
        rand_ini[:, 0] = 0
        sines = torch.rand(1, 2000, 9)
    assert torch.equal(ours.flow_z, flow_z)
    assert torch.equal(ours.rand_ini, rand_ini)
    assert torch.equal(ours.sine_waves_prefix(2000), sines)
    # and the tiny configuration draws differently, so the sizes really are read
    assert not torch.equal(_noise(values).rand_ini, rand_ini)


def test_request_beyond_the_fixed_noise_is_refused(values: dict) -> None:
    with pytest.raises(ValueError, match="limited to"):
        _noise(values).sine_waves_prefix(SINE_NOISE_SAMPLES + 1)
