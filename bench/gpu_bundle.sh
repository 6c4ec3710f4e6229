#!/usr/bin/env bash
# Prepare what bench/gpu_check.sh needs on a lent GPU machine (Python 3.12, torch 2.11, no package
# registry, no ../shared), here, into ignored folders:
#
#   bench/gpu_carry/      carried to the GPU machine (pass `bench/gpu_carry` in the run tool's carry list):
#     wheels/             manylinux x86-64 / cp312 wheels of the packages that machine lacks (CARRY below)
#     shared/             the tiny parity fixture and the prompt recording (what ../shared holds here)
#     onnx/               the two tiny ONNX stand-ins (so the `onnx` package need not travel)
#   bench/gpu_standin/    NOT carried: wheels standing in for what that machine already has (torch 2.11
#                         with its CUDA libraries, as PyPI has it: about 3 GB; numpy, onnxruntime), for
#                         `bench/gpu_check.sh --dry-run` here.
#
#   bench/gpu_bundle.sh [--no-standin]
#
# Uses pip download (the ordinary client) for exact pins; the carried folder stays under the run
# tool's 64 MiB carry limit (checked at the end).
set -euo pipefail
cd "$(dirname "$0")/.."

CARRY_DIR=bench/gpu_carry
STANDIN_DIR=bench/gpu_standin
SHARED="${COSYVOICE_SHARED:-../shared}"
PY="${PYTHON:-.venv/bin/python}"
# Packages the GPU machine lacks (issue 21: loguru, soundfile) and the small ones the check imports.
CARRY=(loguru==0.7.3 soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 pytest==9.2.0 pluggy==1.7.0
       iniconfig==2.3.1 packaging==26.4 pygments==2.20.0 tokenizers==0.23.3 pyyaml==6.0.4)
# What that machine has: only for the dry-run venv here.
STANDIN=(numpy==2.5.5 onnxruntime==1.32.0)
TORCH_STANDIN=torch==2.11.0
PLATFORM=(--only-binary=:all: --implementation cp --python-version 3.12 --platform manylinux_2_25_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64
          --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
          --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)

mkdir -p "$CARRY_DIR/wheels" "$CARRY_DIR/shared/fixtures" "$CARRY_DIR/shared/audio" "$CARRY_DIR/onnx"
"$PY" -m pip download -q --no-deps "${PLATFORM[@]}" -d "$CARRY_DIR/wheels" "${CARRY[@]}"
rm -rf "$CARRY_DIR/shared/fixtures/cosyvoice3-tiny"
cp -r "$SHARED/fixtures/cosyvoice3-tiny" "$CARRY_DIR/shared/fixtures/"
cp "$SHARED/audio/zero_shot_prompt.wav" "$CARRY_DIR/shared/audio/"
"$PY" -c "import sys; sys.path.insert(0, 'tests'); from tiny_onnx import write_tiny_onnx; write_tiny_onnx('$CARRY_DIR/onnx')"

if [[ "${1:-}" != "--no-standin" ]]; then
    mkdir -p "$STANDIN_DIR"
    "$PY" -m pip download -q --no-deps "${PLATFORM[@]}" -d "$STANDIN_DIR" "${STANDIN[@]}"
    # torch's CPU-only builds are not on PyPI: the PyPI build and its CUDA libraries (it will not import without).
    # Its exact NCCL pin may be gone from the index (2.28.9 was, on 2026-12-06): any later 2.x NCCL loads
    # the same, so that one pin becomes a floor; the venv is then installed from these files with --no-deps.
    "$PY" -m pip download -q --no-deps "${PLATFORM[@]}" -d "$STANDIN_DIR" "$TORCH_STANDIN"
    "$PY" - "$STANDIN_DIR" > "$STANDIN_DIR/torch-requirements.txt" <<'PYEOF'
import re, sys, zipfile
from pathlib import Path
wheel = next(Path(sys.argv[1]).glob("torch-2.11.0-*.whl"))
meta = zipfile.ZipFile(wheel)
text = meta.read(next(n for n in meta.namelist() if n.endswith(".dist-info/METADATA"))).decode()
for line in text.splitlines():
    if line.startswith("Requires-Dist:") and "extra ==" not in line:
        requirement = line.split(":", 1)[1].split(";")[0].strip()
        print(re.sub(r"^(nvidia-nccl-cu\d+)==", r"\1>=", requirement))
PYEOF
    "$PY" -m pip download -q "${PLATFORM[@]}" -d "$STANDIN_DIR" -r "$STANDIN_DIR/torch-requirements.txt"
fi

size=$(du -sm "$CARRY_DIR" | cut -f1)
echo "carried: $CARRY_DIR, ${size} MiB (limit 64); pass carry=[\"$CARRY_DIR\"] to the run tool"
if (( size > 60 )); then
    echo "the carried folder is too close to the 64 MiB limit" >&2
    exit 1
fi
