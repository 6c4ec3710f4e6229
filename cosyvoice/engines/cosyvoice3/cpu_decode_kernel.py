"""The CPU decode kernel (csrc/cpu_decode_kernel.cpp): `rows_linear()` (a projection of a few rows) and
`rows_attention()` (each row against its own decode slot), and RowsLinear, the nn.Linear that uses it.

The kernel is compiled on first use with the system's C++ compiler against the installed torch and
kept in a cache dir (a name per source, torch version and compiler), written to a temporary file and
renamed into place, so concurrent starts never load half a library. Where it cannot be built (no
compiler, no AVX2/FMA, not x86-64) `load_rows_kernel()` says why and the decode scheduler falls back
to oneDNN; `python -m cosyvoice.engines.cosyvoice3.cpu_decode_kernel` builds it ahead (run.sh does).
The wrappers load the kernel themselves, so a caller never depends on someone else having loaded it.
"""
from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from loguru import logger
from torch import Tensor, nn

from cosyvoice import settings

SOURCE = Path(__file__).with_name("csrc") / "cpu_decode_kernel.cpp"
FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-fPIC", "-std=c++20", "-shared"]
LANES = 8     # floats per AVX2 register: the kernels take in-feature and head widths that are multiples of it

_lock = threading.Lock()
_loaded: bool | None = None
_why_not = ""


def cache_dir() -> Path:
    return settings.kernel_cache_dir()


def _compiler() -> str | None:
    return settings.compiler()


def build_flags() -> list[str]:
    """Compiler flags, with the C++ ABI torch itself was built with (a mismatch fails at load time
    with undefined std::string symbols)."""
    return [*FLAGS, f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]


def _library_path(compiler: str) -> Path:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), torch.__version__.encode(), " ".join(build_flags()).encode(), version.encode()):
        key.update(part)
    return cache_dir() / f"cpu_decode_kernel-{key.hexdigest()[:16]}.so"


def _cpu_problem() -> str:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"this CPU is {platform.machine()}, the kernel is for x86-64"
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return "this CPU lacks AVX2/FMA"
    return ""


def _build(compiler: str, target: Path) -> None:
    torch_dir = Path(torch.__file__).parent
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=target.stem + ".", suffix=".tmp")
    os.close(fd)
    command = [compiler, *build_flags(), "-isystem", str(torch_dir / "include"),
               "-isystem", str(torch_dir / "include" / "torch" / "csrc" / "api" / "include"),
               str(SOURCE), "-o", temp, "-L", str(torch_dir / "lib"), "-lc10", "-ltorch_cpu"]
    started = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines()
            errors = [line for line in lines if "error" in line] or lines[-1:]
            raise RuntimeError(errors[0].strip() if errors else f"{compiler} exited with {done.returncode}")
        os.replace(temp, target)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
    logger.info("Built the CPU decode kernel in {:.0f} s: {}", time.monotonic() - started, target)


def load_rows_kernel() -> bool:
    """Build (once, cached) and load the kernel; False when it is unavailable here (see why_not())."""
    global _loaded, _why_not
    with _lock:
        if _loaded is not None:
            return _loaded
        _loaded, _why_not = False, _cpu_problem()
        if _why_not:
            return False
        compiler = _compiler()
        if compiler is None:
            _why_not = "no C++ compiler found (install g++, or set CXX)"
            return False
        try:
            target = _library_path(compiler)
            if not target.exists():
                logger.info("Building the CPU decode kernel once (about 10 s) into {}", target.parent)
                _build(compiler, target)
            torch.ops.load_library(str(target))
        except (OSError, RuntimeError, subprocess.SubprocessError) as err:
            _why_not = f"building it failed: {err}"
            return False
        _loaded = True
        return True


def why_not() -> str:
    """Why load_rows_kernel() returned False ('' when it has not or when it loaded)."""
    return _why_not


def _require() -> None:
    if _loaded is not True and not load_rows_kernel():
        raise RuntimeError(f"the CPU decode kernel is not available: {why_not()}")


def rows_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x (M, K) @ weight (N, K)^T (+ bias), float32 CPU, K a multiple of LANES; row m's bits never
    depend on the other rows."""
    _require()
    return torch.ops.cosyvoice_rows.rows_linear(x, weight, bias)


def rows_attention(q: Tensor, k: Tensor, v: Tensor, slots: Tensor, ends: Tensor) -> Tensor:
    """Row m's (already scaled) queries q[m] (Hkv, group, D) against keys/values k, v (slots, Hkv, C, D)
    of slot slots[m], positions [0, ends[m]); float32 softmax; -> (M, Hkv, group, D)."""
    _require()
    return torch.ops.cosyvoice_rows.rows_attention(q, k, v, slots, ends)


class RowsLinear(nn.Module):
    """nn.Linear (float32, CPU) whose inputs of up to `max_rows` rows run on the rows kernel, so a row's
    result never depends on how many rows there are; longer inputs (a prefill) use F.linear.

    The weight is the plain (out, in) tensor shared with the nn.Linear it replaces: no second copy.
    """

    weight: Tensor                   # buffers, declared so their types are known
    bias: Tensor | None

    def __init__(self, linear: nn.Linear, max_rows: int):
        super().__init__()
        if linear.in_features % LANES:
            raise ValueError(f"in_features {linear.in_features} is not a multiple of {LANES}")
        self.in_features, self.out_features, self.max_rows = linear.in_features, linear.out_features, max_rows
        self.register_buffer("weight", linear.weight.detach().float().contiguous())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().contiguous())

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features)                                  # (M, in)
        if flat.shape[0] <= self.max_rows:
            out = rows_linear(flat.float(), self.weight, self.bias)
        else:
            out = F.linear(flat.float(), self.weight, self.bias)
        return out.to(x.dtype).view(*x.shape[:-1], self.out_features)         # (..., out)


def main() -> int:
    if load_rows_kernel():
        print(f"CPU decode kernel ready in {cache_dir()}")
        return 0
    print(f"CPU decode kernel not available: {why_not()}; decoding will use oneDNN", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
