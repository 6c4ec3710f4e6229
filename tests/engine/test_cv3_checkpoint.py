"""The strict checkpoint loader: a wrong or damaged model file must fail loudly, naming file and key."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from cosyvoice.engines.cosyvoice3.checkpoint import fold_weight_norm, load_strict, read_state_dict
from cosyvoice.errors import ModelDirError

FIXTURE = Path("/work/shared/fixtures/cosyvoice3-tiny")


class _Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 3)
        self.conv = nn.Conv1d(3, 5, 2)


def _saved(tmp_path: Path, state: dict, name: str = "model.pt") -> Path:
    path = tmp_path / name
    torch.save(state, path)
    return path


def test_round_trip_loads_every_tensor(tmp_path: Path) -> None:
    source = _Small()
    path = _saved(tmp_path, source.state_dict())
    target = _Small()
    load_strict(target, read_state_dict(path), path.name)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value)


def test_generator_prefix_is_stripped(tmp_path: Path) -> None:
    source = _Small()
    path = _saved(tmp_path, {f"generator.{k}": v for k, v in source.state_dict().items()}, "hift.pt")
    target = _Small()
    load_strict(target, read_state_dict(path), path.name)
    assert torch.equal(target.proj.weight, source.proj.weight)


def test_missing_key_is_named(tmp_path: Path) -> None:
    state = _Small().state_dict()
    del state["conv.bias"]
    with pytest.raises(ModelDirError, match=r"flow\.pt.*missing key 'conv\.bias'"):
        load_strict(_Small(), state, "flow.pt")


def test_unexpected_key_is_named(tmp_path: Path) -> None:
    state = _Small().state_dict()
    state["extra.weight"] = torch.zeros(2)
    with pytest.raises(ModelDirError, match=r"flow\.pt.*unexpected key 'extra\.weight'"):
        load_strict(_Small(), state, "flow.pt")


def test_wrong_shape_names_both_shapes(tmp_path: Path) -> None:
    state = _Small().state_dict()
    state["proj.weight"] = torch.zeros(3, 7)
    with pytest.raises(ModelDirError, match=re.escape("'proj.weight' has shape (3, 7), the model expects (3, 4)")):
        load_strict(_Small(), state, "llm.pt")


def test_key_map_renames_and_can_drop(tmp_path: Path) -> None:
    source = _Small()
    state = {f"model.{k}": v for k, v in source.state_dict().items()}
    state["model.tied_copy"] = source.proj.weight
    target = _Small()
    load_strict(target, state, "llm.pt",
                key_map=lambda k: None if k == "model.tied_copy" else k.removeprefix("model."))
    assert torch.equal(target.conv.weight, source.conv.weight)


def test_truncated_file_is_a_model_dir_error(tmp_path: Path) -> None:
    path = _saved(tmp_path, _Small().state_dict(), "flow.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelDirError, match=r"flow\.pt"):
        read_state_dict(path)


def test_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(ModelDirError, match=r"llm\.pt.*not found"):
        read_state_dict(tmp_path / "llm.pt")
    text = tmp_path / "hift.pt"
    text.write_text("this is not a checkpoint\n")
    with pytest.raises(ModelDirError, match=r"hift\.pt"):
        read_state_dict(text)
    not_tensors = _saved(tmp_path, {"a": 1}, "flow.pt")
    with pytest.raises(ModelDirError, match=r"flow\.pt.*'a'"):
        read_state_dict(not_tensors)


def test_both_weight_norm_styles_fold_to_torch_weight() -> None:
    torch.manual_seed(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        old_style = nn.utils.weight_norm(nn.Conv1d(6, 4, 3))
    with torch.no_grad():
        old_style.weight_g.uniform_(0.5, 1.5)
    new_style = nn.utils.parametrizations.weight_norm(nn.Conv1d(6, 4, 3))
    new_style.load_state_dict(old_style.state_dict())  # torch's load hook converts the old key style
    assert "weight_g" in old_style.state_dict() and "parametrizations.weight.original0" in new_style.state_dict()

    plain = nn.Conv1d(6, 4, 3)
    from_new = fold_weight_norm(new_style.state_dict())
    from_old = fold_weight_norm(old_style.state_dict())
    assert set(from_new) == set(from_old) == {"weight", "bias"}
    assert torch.equal(from_new["weight"], from_old["weight"])
    torch.testing.assert_close(from_new["weight"], new_style.weight.detach(), rtol=1e-6, atol=1e-7)
    load_strict(plain, from_new, "hift.pt")
    x = torch.randn(1, 6, 10)
    torch.testing.assert_close(plain(x), new_style(x), rtol=1e-5, atol=1e-6)


def test_fixture_hift_folds_and_every_gain_is_consumed() -> None:
    state = read_state_dict(FIXTURE / "hift.pt")
    folded = fold_weight_norm(state)
    assert not any("parametrizations" in k or k.endswith(("weight_g", "weight_v")) for k in folded)
    n_pairs = sum(k.endswith(".original0") for k in state)
    assert n_pairs > 0 and len(folded) == len(state) - n_pairs
