"""Strict loading of the official checkpoints (llm.pt, flow.pt, hift.pt) into our modules.

Every tensor in a checkpoint must land in exactly one parameter/buffer of the same shape and every
parameter/buffer must be filled; anything else is a ModelDirError that names the file and the key,
so a wrong or damaged model directory fails at load time instead of producing noise.

One file reader (`read_state_dict`) serves all three. flow.pt and hift.pt are then matched against
the module (`load_strict`); llm.pt is checked against the official key layout its config implies
and renamed/fused into our parameter names (`read_llm_params`), because the LLM is built on the
meta device and adopts those tensors instead of copying into a second full-size copy.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from cosyvoice.engines.cosyvoice3.config import LLMConfig
from cosyvoice.engines.cosyvoice3.model_dir import QWEN_DIR
from cosyvoice.errors import ModelDirError

_GENERATOR_PREFIX = "generator."


def read_state_dict(path: Path, mmap: bool = False) -> dict[str, Tensor]:
    """The flat name -> tensor dict saved in `path` (CPU, as stored); a leading "generator." is dropped.

    mmap: tensors stay backed by the file and pages are read as they are used (the pages read count in
    the process's resident memory for as long as the tensors live).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelDirError(f"{path.name}: not found in {path.parent}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
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
                key_map: Callable[[str], str | None] | None = None, assign: bool = False) -> None:
    """Copy `state_dict` into `module`, demanding a one-to-one match of names and shapes.

    `key_map` renames checkpoint keys to module keys; returning None marks a key as deliberately
    unused (e.g. a tied duplicate). Raises ModelDirError naming `file_name` and the first bad key.
    assign: the module takes the tensors themselves instead of copying them (a module built on the
    meta device; they keep the checkpoint's dtype).
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
    module.load_state_dict(mapped, strict=True, assign=assign)


# ---------------------------------------------------------------------------------------------
# llm.pt: official Qwen2 naming -> our fused CosyVoice3LM names

_QWEN = "llm.model.model."


def llm_checkpoint_layout(cfg: LLMConfig) -> dict[str, tuple[int, ...]]:
    """Every key llm.pt must hold, with its shape, in the official naming."""
    h, hd, i = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
    q, kv = cfg.num_heads * hd, cfg.num_kv_heads * hd
    layout: dict[str, tuple[int, ...]] = {f"{_QWEN}embed_tokens.weight": (cfg.text_vocab_size, h)}
    for n in range(cfg.num_layers):
        p = f"{_QWEN}layers.{n}."
        layout.update({
            f"{p}self_attn.q_proj.weight": (q, h), f"{p}self_attn.q_proj.bias": (q,),
            f"{p}self_attn.k_proj.weight": (kv, h), f"{p}self_attn.k_proj.bias": (kv,),
            f"{p}self_attn.v_proj.weight": (kv, h), f"{p}self_attn.v_proj.bias": (kv,),
            f"{p}self_attn.o_proj.weight": (h, q),
            f"{p}mlp.gate_proj.weight": (i, h), f"{p}mlp.up_proj.weight": (i, h), f"{p}mlp.down_proj.weight": (h, i),
            f"{p}input_layernorm.weight": (h,), f"{p}post_attention_layernorm.weight": (h,),
        })
    layout[f"{_QWEN}norm.weight"] = (h,)
    layout["llm.model.lm_head.weight"] = (cfg.text_vocab_size, h)  # accepted, never used
    layout["llm_decoder.weight"] = (cfg.speech_vocab_size, h)
    layout["speech_embedding.weight"] = (cfg.speech_vocab_size, h)
    return layout


def check_layout(state: dict[str, Tensor], layout: dict[str, tuple[int, ...]], file_name: str) -> None:
    """Demand exactly the keys of `layout`, each a floating-point tensor of the listed shape."""
    for key, value in state.items():
        if key not in layout:
            raise ModelDirError(f"{file_name}: unexpected key {key!r}; the file does not belong to a CosyVoice3 "
                                "LLM with this configuration")
        if not value.is_floating_point():
            raise ModelDirError(f"{file_name}: key {key!r} is not a floating-point tensor")
        if tuple(value.shape) != layout[key]:
            raise ModelDirError(f"{file_name}: key {key!r} has shape {tuple(value.shape)}, expected {layout[key]} "
                                f"from cosyvoice3.yaml / {QWEN_DIR}/config.json")
    for key, shape in layout.items():
        if key not in state:
            raise ModelDirError(f"{file_name}: missing key {key!r} of shape {shape}")


def _sole_owner(tensor: Tensor) -> bool:
    """Does `tensor` span its whole storage, contiguously (so adopting it keeps nothing else alive)?"""
    return (tensor.is_contiguous() and tensor.storage_offset() == 0
            and tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size())


def read_llm_params(path: Path, cfg: LLMConfig, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """llm.pt (or another LLM checkpoint file) checked key by key, as CosyVoice3LM parameters.

    q/k/v and gate/up are concatenated into one tensor each (one matmul per step instead of three /
    two). The file is read into memory once and its tensors are adopted where they already have
    `dtype` and `device` (each checkpoint tensor is dropped as soon as it has been used), so loading
    needs about one copy of the weights, not two; none stays backed by the file. The tied lm_head
    duplicate is dropped.
    """
    path = Path(path)
    state = read_state_dict(path)
    check_layout(state, llm_checkpoint_layout(cfg), path.name)

    def own(key: str) -> Tensor:
        tensor = state.pop(key)
        moved = tensor.to(device=device, dtype=dtype)
        if moved is tensor and not _sole_owner(tensor):
            moved = tensor.clone()      # a view into a larger saved storage: keep its own values only
        return moved

    def joined(keys: list[str]) -> Tensor:
        return torch.cat([state.pop(k).to(device=device, dtype=dtype) for k in keys], dim=0)

    params = {
        "embed_tokens.weight": own(f"{_QWEN}embed_tokens.weight"),
        "norm.weight": own(f"{_QWEN}norm.weight"),
        "speech_embedding.weight": own("speech_embedding.weight"),
        "llm_decoder.weight": own("llm_decoder.weight"),
    }
    for n in range(cfg.num_layers):
        p, ours = f"{_QWEN}layers.{n}.", f"layers.{n}."
        params.update({
            f"{ours}attn_norm.weight": own(f"{p}input_layernorm.weight"),
            f"{ours}attn.qkv.weight": joined([f"{p}self_attn.{x}_proj.weight" for x in "qkv"]),
            f"{ours}attn.qkv.bias": joined([f"{p}self_attn.{x}_proj.bias" for x in "qkv"]),
            f"{ours}attn.out.weight": own(f"{p}self_attn.o_proj.weight"),
            f"{ours}mlp_norm.weight": own(f"{p}post_attention_layernorm.weight"),
            f"{ours}mlp.gate_up.weight": joined([f"{p}mlp.gate_proj.weight", f"{p}mlp.up_proj.weight"]),
            f"{ours}mlp.down.weight": own(f"{p}mlp.down_proj.weight"),
        })
    return params
