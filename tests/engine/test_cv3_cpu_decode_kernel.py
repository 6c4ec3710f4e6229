"""The CPU decode kernel (csrc/cpu_decode_kernel.cpp): right products, and a row's bits independent of the
rows beside it, of the thread count and of which tiling its row count picks."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cosyvoice.engines.cosyvoice3 import cpu_decode_kernel
from cosyvoice.engines.cosyvoice3.cpu_decode_kernel import RowsLinear, load_rows_kernel, rows_attention

ROOT = Path(__file__).resolve().parents[2]

# (out, in): the full-size LLM's projections (in 896 fits L1 for 4 rows, 4864 does not), the tiny
# fixture's, and an odd out count (the speech head has 6761 rows).
SHAPES = [(1152, 896), (64, 4864), (40, 16), (16, 40), (13, 24), (1, 8)]


@pytest.fixture(scope="module", autouse=True)
def kernel():
    assert load_rows_kernel(), f"the CPU decode kernel should build on this machine: {cpu_decode_kernel.why_not()}"


def projection(out_features: int, in_features: int, bias: bool, max_rows: int = 8) -> RowsLinear:
    torch.manual_seed(out_features * 1000 + in_features)
    return RowsLinear(nn.Linear(in_features, out_features, bias=bias), max_rows)


@pytest.mark.parametrize("out_features, in_features", SHAPES)
@pytest.mark.parametrize("bias", [False, True])
def test_products_match_float64(out_features, in_features, bias) -> None:
    layer = projection(out_features, in_features, bias)
    x = torch.randn(7, in_features)
    want = F.linear(x.double(), layer.weight.double(), None if layer.bias is None else layer.bias.double())
    with torch.inference_mode():
        got = layer(x)
    assert got.dtype == torch.float32 and got.shape == (7, out_features)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * in_features ** 0.5)


@pytest.mark.parametrize("out_features, in_features", SHAPES)
def test_a_rows_bits_do_not_depend_on_the_rows_beside_it(out_features, in_features) -> None:
    layer = projection(out_features, in_features, bias=True)
    row = torch.randn(1, in_features)
    with torch.inference_mode():
        alone = layer(row)[0]
        for count in range(2, 9):           # 1-4 rows pick different tilings; 5-8 take two passes
            for index in range(count):
                batch = 100 * torch.randn(count, in_features)
                batch[index] = row[0]
                assert torch.equal(layer(batch)[index], alone), (count, index)


def test_a_rows_bits_do_not_depend_on_the_thread_count() -> None:
    layer = projection(1152, 896, bias=True)
    x = torch.randn(4, 896)
    threads = torch.get_num_threads()
    try:
        results = []
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            with torch.inference_mode():
                results.append(layer(x))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(results[0], r) for r in results[1:])


def test_longer_inputs_take_the_ordinary_matmul_and_shapes_are_kept() -> None:
    layer = projection(24, 16, bias=True, max_rows=4)
    prefill = torch.randn(1, 9, 16)                          # (B, T, in): a prompt, not a decode step
    with torch.inference_mode():
        assert torch.equal(layer(prefill), F.linear(prefill, layer.weight, layer.bias))
        assert layer(torch.randn(3, 1, 16)).shape == (3, 1, 24)


def test_in_features_that_are_not_a_multiple_of_8_are_refused() -> None:
    with pytest.raises(ValueError, match="multiple of 8"):
        RowsLinear(nn.Linear(12, 4), 4)


def test_the_kernel_is_built_once_atomically_by_concurrent_starts(tmp_path) -> None:
    # Two processes start on an empty cache: both load a working kernel, and no temporary file is left.
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    code = ("import torch; from cosyvoice.engines.cosyvoice3 import cpu_decode_kernel as r; "
            "x = torch.randn(2, 8); w = torch.randn(3, 8); "
            "assert torch.allclose(r.rows_linear(x, w, None), x @ w.T, atol=1e-5)")
    starts = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]
    for process in starts:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
    kernels = tmp_path / "cosyvoice-studio" / "kernels"
    assert len(list(kernels.glob("cpu_decode_kernel-*.so"))) == 1
    assert not list(kernels.glob("*.tmp"))


def test_without_a_compiler_decoding_falls_back_to_onednn_and_says_why(tmp_path) -> None:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "CXX": "no-such-compiler"}
    code = ("import torch; from torch import nn; "
            "from cosyvoice.engines.cosyvoice3.scheduler import PackedLinear, row_invariant_twin; "
            "from cosyvoice.engines.cosyvoice3.llm import load_llm; "
            "from cosyvoice.engines.cosyvoice3.config import ModelConfig; "
            "from conftest import FIXTURE; "
            "llm = load_llm(FIXTURE / 'llm.pt', ModelConfig.from_model_dir(FIXTURE).llm); "
            "twin = row_invariant_twin(llm, 4); "
            "assert isinstance(twin.layers[0].mlp.down, PackedLinear), type(twin.layers[0].mlp.down)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "tests", env={**env, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "WARNING" in done.stderr and "no C++ compiler found" in done.stderr


def attention_reference(q, k, v, slots, ends):
    # float64 softmax attention of each row against its own slot's first `end` positions
    rows = []
    for m, (slot, end) in enumerate(zip(slots.tolist(), ends.tolist())):
        keys, values = k[slot, :, :end].double(), v[slot, :, :end].double()          # (Hkv, S, D)
        weights = (q[m].double() @ keys.transpose(1, 2)).softmax(dim=-1)            # (Hkv, G, S)
        rows.append(weights @ values)
    return torch.stack(rows)


@pytest.mark.parametrize("kv_heads, group, head_dim", [(2, 7, 64), (1, 2, 8)])   # full size, tiny fixture
def test_row_attention_matches_float64_and_ignores_other_rows(kv_heads, group, head_dim) -> None:
    gen = torch.Generator().manual_seed(head_dim)
    k = torch.randn(4, kv_heads, 300, head_dim, generator=gen)
    v = torch.randn(4, kv_heads, 300, head_dim, generator=gen)
    q = torch.randn(4, kv_heads, group, head_dim, generator=gen) * head_dim ** -0.5
    slots, ends = torch.tensor([2, 0, 3, 1]), torch.tensor([1, 300, 77, 150])
    attention = rows_attention
    out = attention(q, k, v, slots, ends)
    torch.testing.assert_close(out.double(), attention_reference(q, k, v, slots, ends), rtol=1e-5, atol=1e-6)
    for m in range(4):   # alone, or beside other rows: the same bits
        assert torch.equal(attention(q[m:m + 1], k, v, slots[m:m + 1], ends[m:m + 1])[0], out[m])
    k[2, :, 77:] = float("nan")                              # past a row's end is never read
    assert torch.equal(attention(q[2:3], k, v, slots[2:3], ends[2:3])[0], out[2])


def test_row_attention_refuses_reads_outside_the_cache() -> None:
    k = torch.randn(2, 1, 16, 8)
    with pytest.raises(RuntimeError, match="outside the cache"):
        rows_attention(torch.randn(1, 1, 2, 8), k, k, torch.tensor([1]), torch.tensor([17]))
