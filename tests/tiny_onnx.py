"""Tiny stand-ins for campplus.onnx and speech_tokenizer_v3.onnx, for tests and CI.

They have the released models' signatures (names, dtypes, ranks, output lengths) but fixed
random weights, so a fixture model dir plus these two files is a complete CosyVoice3 model dir:

    python tests/tiny_onnx.py --fixture FIXTURE_DIR --out OUT_DIR

Test-only, so it lives with the tests (bench/engine_speed.py imports it too), not in the engine.

* campplus:  input (B, T, 80) float32 -> output (B, 192) float32
             = 4 * tanh((mean over time of |x|) @ W[80, 192])
* tokenizer: feats (1, 128, T) float32, feats_length (1,) int32 -> indices (1, ceil(len / 4)) int32
             frames are averaged in groups of 4 (zero padded), projected to 8 dims, and each dim is
             rounded to one of 3 levels, so the id = sum(level_i * 3^i) lies in [0, 6561) -- the same
             8-digit base-3 layout as the real tokenizer's finite scalar quantiser.

Built with the `onnx` helper API (no torch.onnx exporter, which needs onnxscript on this torch).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

CAMPPLUS_FILE = "campplus.onnx"
SPEECH_TOKENIZER_FILE = "speech_tokenizer_v3.onnx"
EMBEDDING_DIM = 192
FBANK_BINS = 80
WHISPER_MELS = 128
FRAMES_PER_TOKEN = 4
TOKEN_DIGITS = 8                     # 3 ** 8 = 6561 ids
OPSET = 17


def _onnx():
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as err:  # tests and CI only; the app never needs it
        raise RuntimeError("building tiny onnx models needs the `onnx` package: pip install onnx") from err
    return onnx, TensorProto, helper, numpy_helper


def _const(numpy_helper, name: str, value: np.ndarray):
    return numpy_helper.from_array(np.asarray(value), name=name)


def build_campplus(seed: int = 0):
    """onnx.ModelProto: (B, T, 80) -> (B, 192)."""
    onnx, TensorProto, helper, numpy_helper = _onnx()
    rng = np.random.RandomState(seed)
    projection = (rng.standard_normal((FBANK_BINS, EMBEDDING_DIM)) * 0.25 / np.sqrt(FBANK_BINS)).astype(np.float32)
    nodes = [
        # The input is mean-normalised over time, so pool its spread (mean |x|), not its mean.
        helper.make_node("Abs", ["input"], ["magnitude"]),
        helper.make_node("ReduceMean", ["magnitude"], ["pooled"], axes=[1], keepdims=0),  # (B, 80)
        helper.make_node("MatMul", ["pooled", "projection"], ["projected"]),               # (B, 192)
        helper.make_node("Tanh", ["projected"], ["squashed"]),
        helper.make_node("Mul", ["squashed", "gain"], ["output"]),
    ]
    initializers = [
        _const(numpy_helper, "projection", projection),
        _const(numpy_helper, "gain", np.array(4.0, dtype=np.float32)),
    ]
    graph = helper.make_graph(
        nodes, "tiny_campplus",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["B", "T", FBANK_BINS])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["B", EMBEDDING_DIM])],
        initializers)
    return _finish(onnx, helper, graph)


def build_speech_tokenizer(seed: int = 1):
    """onnx.ModelProto: feats (1, 128, T) float, feats_length (1,) int32 -> indices (1, ceil(len/4)) int32."""
    onnx, TensorProto, helper, numpy_helper = _onnx()
    rng = np.random.RandomState(seed)
    projection = rng.standard_normal((WHISPER_MELS, TOKEN_DIGITS)).astype(np.float32)
    projection /= np.float32(np.sqrt(WHISPER_MELS) * 0.25)   # log-mel values are O(1): spread them over levels
    digit_weights = (3 ** np.arange(TOKEN_DIGITS)).astype(np.float32)
    i64 = lambda *v: np.array(v, dtype=np.int64)  # noqa: E731
    nodes = [
        # Zero-pad time to a multiple of 4: pad = (4 - T % 4) % 4.
        helper.make_node("Shape", ["feats"], ["feats_shape"]),
        helper.make_node("Gather", ["feats_shape", "two"], ["n_frames"], axis=0),            # (1,)
        helper.make_node("Mod", ["n_frames", "four"], ["rest"]),
        helper.make_node("Sub", ["four", "rest"], ["missing"]),
        helper.make_node("Mod", ["missing", "four"], ["pad_right"]),
        helper.make_node("Concat", ["zeros5", "pad_right"], ["pads"], axis=0),              # (6,)
        helper.make_node("Pad", ["feats", "pads"], ["padded"], mode="constant"),           # (1, 128, T4)
        # Average each group of 4 frames.
        helper.make_node("Reshape", ["padded", "group_shape"], ["grouped"]),                # (1, 128, T4/4, 4)
        helper.make_node("ReduceMean", ["grouped"], ["pooled"], axes=[3], keepdims=0),   # (1, 128, n)
        helper.make_node("Transpose", ["pooled"], ["frames"], perm=[0, 2, 1]),              # (1, n, 128)
        helper.make_node("MatMul", ["frames", "projection"], ["digits_raw"]),               # (1, n, 8)
        # Three levels per digit: 0 below -0.5, 1 in between, 2 above 0.5.
        helper.make_node("Greater", ["digits_raw", "minus_half"], ["above_low"]),
        helper.make_node("Greater", ["digits_raw", "half"], ["above_high"]),
        helper.make_node("Cast", ["above_low"], ["above_low_f"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["above_high"], ["above_high_f"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["above_low_f", "above_high_f"], ["levels"]),              # (1, n, 8)
        helper.make_node("MatMul", ["levels", "digit_weights"], ["ids_f"]),                 # (1, n)
        helper.make_node("Cast", ["ids_f"], ["ids"], to=TensorProto.INT32),
        # Keep ceil(feats_length / 4) tokens, as the real model honours the length input.
        helper.make_node("Cast", ["feats_length"], ["length64"], to=TensorProto.INT64),
        helper.make_node("Add", ["length64", "three"], ["length_up"]),
        helper.make_node("Div", ["length_up", "four"], ["n_tokens"]),                      # (1,)
        helper.make_node("Slice", ["ids", "zero1", "n_tokens", "one1"], ["indices"]),
    ]
    initializers = [
        _const(numpy_helper, "two", i64(2)),
        _const(numpy_helper, "three", i64(3)),
        _const(numpy_helper, "four", i64(4)),
        _const(numpy_helper, "zeros5", np.zeros(5, dtype=np.int64)),
        _const(numpy_helper, "group_shape", i64(1, WHISPER_MELS, -1, FRAMES_PER_TOKEN)),
        _const(numpy_helper, "projection", projection),
        _const(numpy_helper, "minus_half", np.array(-0.5, dtype=np.float32)),
        _const(numpy_helper, "half", np.array(0.5, dtype=np.float32)),
        _const(numpy_helper, "digit_weights", digit_weights),
        _const(numpy_helper, "zero1", i64(0)),
        _const(numpy_helper, "one1", i64(1)),
    ]
    graph = helper.make_graph(
        nodes, "tiny_speech_tokenizer_v3",
        [helper.make_tensor_value_info("feats", TensorProto.FLOAT, [1, WHISPER_MELS, "T"]),
         helper.make_tensor_value_info("feats_length", TensorProto.INT32, [1])],
        [helper.make_tensor_value_info("indices", TensorProto.INT32, [1, "T_tok"])],
        initializers)
    return _finish(onnx, helper, graph)


def _finish(onnx, helper, graph):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="cosyvoice-studio-tiny")
    model.ir_version = 8                               # readable by onnxruntime >= 1.14
    onnx.checker.check_model(model)
    return model


def write_tiny_onnx(out_dir: str | os.PathLike) -> list[Path]:
    """Write both tiny models into `out_dir`; returns their paths."""
    onnx, *_ = _onnx()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / CAMPPLUS_FILE, out / SPEECH_TOKENIZER_FILE]
    for path, model in zip(paths, (build_campplus(), build_speech_tokenizer())):
        onnx.save(model, str(path))
    return paths


def make_tiny_model_dir(fixture_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """A complete model dir: symlinks to the fixture's yaml/pt/tokenizer files, plus tiny onnx models.

    Everything in the fixture dir except `cases/`, README.md and onnx files is linked, so other
    fixture sizes work too. Existing links in `out_dir` are replaced.
    """
    fixture = Path(fixture_dir).resolve()
    if not (fixture / "cosyvoice3.yaml").is_file():
        raise FileNotFoundError(f"{fixture}: no cosyvoice3.yaml, not a model/fixture dir")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for entry in sorted(fixture.iterdir()):
        if entry.name in ("cases", "README.md") or entry.suffix == ".onnx":
            continue
        link = out / entry.name
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.exists():
            raise FileExistsError(f"{link} exists and is not a file or link; choose an empty --out dir")
        link.symlink_to(entry, target_is_directory=entry.is_dir())
    for name in (CAMPPLUS_FILE, SPEECH_TOKENIZER_FILE):
        if (out / name).is_symlink():
            (out / name).unlink()
    write_tiny_onnx(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tests/tiny_onnx.py",
                                     description="Make a complete tiny CosyVoice3 model dir from a fixture dir.")
    parser.add_argument("--fixture", required=True, type=Path, help="fixture model dir (cosyvoice3.yaml, *.pt, ...)")
    parser.add_argument("--out", required=True, type=Path, help="model dir to create")
    args = parser.parse_args(argv)
    try:
        out = make_tiny_model_dir(args.fixture, args.out)
    except (OSError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"tiny model dir ready: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
