"""The CosyVoice3 flow decoder reproduces the official mel frames and fails clearly on a bad model dir."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from cosyvoice.engines.cosyvoice3.config import FlowConfig
from cosyvoice.engines.cosyvoice3.flow import load_flow
from cosyvoice.engines.cosyvoice3.yaml_values import load_yaml_values
from cosyvoice.errors import EngineError, ModelDirError
from cosyvoice.parity import flow as flow_parity
from cosyvoice.parity import float64_tolerance, load_case

FIXTURE = Path("/work/shared/fixtures/cosyvoice3-tiny")


def _fixture_config(values: dict | None = None) -> FlowConfig:
    return FlowConfig.from_yaml(values or load_yaml_values(FIXTURE / "cosyvoice3.yaml"))


def _official_noise() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(1, 80, 15000)


@pytest.fixture(scope="module")
def flow():
    torch.set_num_threads(2)
    return load_flow(FIXTURE, _fixture_config())


@pytest.fixture(scope="module")
def noise() -> torch.Tensor:
    return _official_noise()


def test_parity_family_passes() -> None:
    results = list(flow_parity.run(FIXTURE, None))
    failed = [r.line() for r in results if not r.passed]
    assert len(results) >= 12 and not failed, "\n".join(failed)


def test_config_follows_the_yaml(tmp_path: Path) -> None:
    values = load_yaml_values(FIXTURE / "cosyvoice3.yaml")
    cfg = FlowConfig.from_yaml(values)
    estimator = values["flow"]["decoder"]["estimator"]
    assert (cfg.dit.dim, cfg.dit.depth, cfg.dit.heads) == (estimator["dim"], estimator["depth"], estimator["heads"])
    assert cfg.lookahead_channels == values["flow"]["pre_lookahead_layer"]["channels"]


def test_yaml_that_does_not_fit_the_checkpoint_is_refused(tmp_path: Path) -> None:
    values = load_yaml_values(FIXTURE / "cosyvoice3.yaml")
    values["flow"]["decoder"]["estimator"]["depth"] += 1
    with pytest.raises(ModelDirError, match=r"flow\.pt.*missing key 'estimator\.blocks\.2\."):
        load_flow(FIXTURE, _fixture_config(values))
    values["flow"]["decoder"]["estimator"]["depth"] -= 1
    values["flow"]["pre_lookahead_layer"]["channels"] *= 2
    with pytest.raises(ModelDirError, match=r"flow\.pt.*pre_lookahead_layer\.conv1\.weight.*shape"):
        load_flow(FIXTURE, _fixture_config(values))


def test_missing_flow_checkpoint_is_a_model_dir_error(tmp_path: Path) -> None:
    shutil.copy(FIXTURE / "cosyvoice3.yaml", tmp_path / "cosyvoice3.yaml")
    with pytest.raises(ModelDirError, match=r"flow\.pt"):
        load_flow(tmp_path, _fixture_config())


def test_streaming_chunk_frames_survive_into_the_final_call(flow, noise) -> None:
    # With block-causal attention, frames in blocks that were complete in the first chunk call must not
    # change when later tokens arrive: streamed audio stays seamless.
    case = load_case(FIXTURE, "flow_stream_final.pt")
    args = (case["prompt_token"], case["prompt_feat"], case["embedding"], noise)
    n_chunk_tokens = 30
    chunk = flow.inference(case["token"][:, :n_chunk_tokens], *args, streaming=True, finalize=False)
    final = flow.inference(case["token"], *args, streaming=True, finalize=True)
    assert chunk.shape[-1] == 2 * (n_chunk_tokens - 3)
    torch.testing.assert_close(chunk, final[:, :, : chunk.shape[-1]], rtol=0, atol=1e-4)
    full_attention = flow.inference(case["token"], *args, streaming=False, finalize=True)
    assert (full_attention[:, :, :54] - chunk).abs().max() > 1e-3  # the mask really changes the result


def test_noise_must_cover_the_utterance(flow) -> None:
    case = load_case(FIXTURE, "flow_nonstream.pt")
    with pytest.raises(EngineError, match="noise"):
        flow.inference(case["token"], case["prompt_token"], case["prompt_feat"], case["embedding"],
                       torch.zeros(1, 80, 100), streaming=False, finalize=True)


def test_library_code_leaves_the_global_rng_alone(flow, noise) -> None:
    case = load_case(FIXTURE, "flow_nonstream.pt")
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    flow.inference(case["token"], case["prompt_token"], case["prompt_feat"], case["embedding"], noise,
                   streaming=False, finalize=True, n_timesteps=2)
    assert torch.equal(torch.rand(3), expected_next)


def test_bf16_autocast_stays_close_to_fp32(flow, noise) -> None:
    case = load_case(FIXTURE, "flow_nonstream.pt")
    args = (case["token"], case["prompt_token"], case["prompt_feat"], case["embedding"], noise)
    exact = flow.inference(*args, streaming=False, finalize=True)
    fast = flow.inference(*args, streaming=False, finalize=True, bf16=True)
    assert fast.dtype == torch.float32 and fast.shape == exact.shape
    assert (fast - exact).abs().max() < 0.1 * exact.abs().max()


def test_estimator_forward_matches_official_first_call(flow) -> None:
    case = load_case(FIXTURE, "flow_nonstream.pt")
    out = flow.estimator(case["est0_x"], case["est0_mu"], case["est0_t"], case["est0_spks"], case["est0_cond"])
    tolerance = float64_tolerance(FIXTURE, "flow_nonstream", "est0_out")
    assert (out - case["est0_out"]).abs().max() < tolerance


def test_checkpoint_missing_one_attention_projection_is_named(tmp_path: Path) -> None:
    state = torch.load(FIXTURE / "flow.pt", weights_only=True)
    del state["decoder.estimator.transformer_blocks.1.attn.to_k.bias"]
    torch.save(state, tmp_path / "flow.pt")
    with pytest.raises(ModelDirError, match=r"flow\.pt.*transformer_blocks\.1\.attn\.to_k\.bias"):
        load_flow(tmp_path, _fixture_config())
