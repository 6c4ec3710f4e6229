"""Strict loading of the official checkpoints (llm.pt, flow.pt, hift.pt) into our modules.

Every tensor in a checkpoint must land in exactly one parameter/buffer of the same shape and every
parameter/buffer must be filled; anything else is a ModelDirError that names the file and the key,
so a wrong or damaged model directory fails at load time instead of producing noise.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from cosyvoice.errors import ModelDirError

_GENERATOR_PREFIX = "generator."


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """The flat name -> tensor dict saved in `path` (CPU, as stored); a leading "generator." is dropped."""
    path = Path(path)
    if not path.is_file():
        raise ModelDirError(f"{path.name}: file not found at {path}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # the unpickler raises many types on garbage input (IndexError, EOFError, ...)
        raise ModelDirError(f"{path.name}: not a readable torch checkpoint (truncated or damaged?): {err}") from err
    if not isinstance(loaded, dict) or not loaded:
        raise ModelDirError(f"{path.name}: expected a non-empty dict of tensors, found {type(loaded).__name__}")
    for key, value in loaded.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise ModelDirError(f"{path.name}: entry {key!r} is a {type(value).__name__}, expected a tensor "
                                "(is this a state_dict saved with torch.save(module.state_dict())?)")
    # hift.pt of some releases was saved from a wrapper whose generator sat under `generator.`
    if all(key.startswith(_GENERATOR_PREFIX) for key in loaded):
        loaded = {key[len(_GENERATOR_PREFIX):]: value for key, value in loaded.items()}
    return loaded


_NEW_STYLE = (".parametrizations.weight.original0", ".parametrizations.weight.original1")
_OLD_STYLE = (".weight_g", ".weight_v")


def _weight_from_norm(gain: Tensor, direction: Tensor) -> Tensor:
    # The norm runs over every dim in which the gain has size 1 (all but dim 0 for the usual dim=0 setting).
    # Folding happens once at load time, so do it in float64 and round once: the result is the correctly
    # rounded weight rather than one that depends on a float32 reduction order.
    g, v = gain.double(), direction.double()
    reduce_dims = [d for d in range(v.dim()) if g.dim() != v.dim() or g.shape[d] == 1]
    norm = v.pow(2).sum(dim=reduce_dims, keepdim=True).sqrt()
    return (g * v / norm).to(direction.dtype)


def fold_weight_norm(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Replace weight-norm (gain, direction) pairs by the plain `<name>.weight` they stand for.

    Both torch layouts are accepted: `<name>.parametrizations.weight.original0/1` (parametrize API)
    and `<name>.weight_g/weight_v` (old hook API). Key order is kept otherwise.
    """
    folded: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        dotted = "." + key  # so that a bare top-level "weight_g" matches like "conv.weight_g"
        for gain_suffix, direction_suffix in (_NEW_STYLE, _OLD_STYLE):
            if dotted.endswith(gain_suffix):
                prefix = dotted[1: -len(gain_suffix)]
                direction_key = _join(prefix, direction_suffix)
                if direction_key not in state_dict:
                    raise ModelDirError(f"weight-norm gain {key!r} has no matching {direction_key!r}")
                folded[_join(prefix, ".weight")] = _weight_from_norm(value, state_dict[direction_key])
                break
            if dotted.endswith(direction_suffix):
                gain_key = _join(dotted[1: -len(direction_suffix)], gain_suffix)
                if gain_key not in state_dict:
                    raise ModelDirError(f"weight-norm direction {key!r} has no matching {gain_key!r}")
                break  # written together with its gain
        else:
            folded[key] = value
    return folded


def _join(prefix: str, suffix: str) -> str:
    return prefix + suffix if prefix else suffix[1:]


def load_strict(module: nn.Module, state_dict: dict[str, Tensor], file_name: str,
                key_map: Callable[[str], str | None] | None = None) -> None:
    """Copy `state_dict` into `module`, demanding a one-to-one match of names and shapes.

    `key_map` renames checkpoint keys to module keys; returning None marks a key as deliberately
    unused (e.g. a tied duplicate). Raises ModelDirError naming `file_name` and the first bad key.
    """
    expected = module.state_dict()
    mapped: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        target = key_map(key) if key_map is not None else key
        if target is None:
            continue
        if target not in expected:
            raise ModelDirError(f"{file_name}: unexpected key {key!r} (the model has no {target!r}); "
                                "the file does not belong to this model or configuration")
        if target in mapped:
            raise ModelDirError(f"{file_name}: key {key!r} maps onto {target!r}, which is already filled")
        if tuple(value.shape) != tuple(expected[target].shape):
            raise ModelDirError(f"{file_name}: key {key!r} has shape {tuple(value.shape)}, "
                                f"the model expects {tuple(expected[target].shape)}; "
                                "the configuration (yaml) does not match the checkpoint")
        mapped[target] = value
    for target in expected:
        if target not in mapped:
            raise ModelDirError(f"{file_name}: missing key {target!r} of shape {tuple(expected[target].shape)}")
    module.load_state_dict(mapped, strict=True)
