#!/usr/bin/env bash
# GPU check for the CosyVoice3 engine, sized to finish in under 8 minutes on one H200:
#   1. build (or reuse) the full-size random-weight model dir,
#   2. run the CUDA-only tests (CUDA graph step == plain step),
#   3. bench/engine_speed.py --device cuda --precision auto (bf16 where supported): decode figures at
#      slots 1 and 4, with CUDA graphs on and off, and the first streaming chunk.
#
#   bench/gpu_check.sh [--dry-run] [--out DIR (default $TMPDIR/cosyvoice_gpu_check)] [--model-dir DIR]
#
# Needs only torch, numpy, tokenizers, pyyaml, onnxruntime on the machine; the other packages the
# engine and tests import (loguru, soundfile, onnx, pytest) are installed from wheels carried in
# $WHEELS (default bench/wheels) when they are missing.
# --dry-run: the CPU-checkable parts here (model dir, the test selection, which skips without CUDA,
# and one short CPU bench run), so the script itself is known to work before a GPU is lent.
set -euo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
OUT="${TMPDIR:-/tmp}/cosyvoice_gpu_check"
MODEL_DIR=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --out) OUT="$2"; shift ;;
        --model-dir) MODEL_DIR="$2"; shift ;;
        *) echo "unknown argument: $1 (use --dry-run, --out DIR, --model-dir DIR)" >&2; exit 2 ;;
    esac
    shift
done
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
    if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
MODEL_DIR="${MODEL_DIR:-$OUT/Fun-CosyVoice3-0.5B-random}"
WHEELS="${WHEELS:-bench/wheels}"
mkdir -p "$OUT"
started=$(date +%s)
step() { echo "[gpu_check +$(( $(date +%s) - started ))s] $*" >&2; }

step "python: $PY; checking imports"
missing=$("$PY" - <<'EOF'
import importlib.util
need = ["torch", "numpy", "tokenizers", "yaml", "onnxruntime", "loguru", "soundfile", "onnx", "pytest"]
print(" ".join(n for n in need if importlib.util.find_spec(n) is None))
EOF
)
if [[ -n "$missing" ]]; then
    if [[ -d "$WHEELS" ]]; then
        step "installing from $WHEELS: $missing"
        pip_names=$(echo "$missing" | sed 's/\byaml\b/pyyaml/')
        "$PY" -m pip install --no-index --find-links "$WHEELS" $pip_names
    else
        echo "missing Python packages: $missing; carry their wheels in $WHEELS (pip download -d $WHEELS ...)" >&2
        exit 1
    fi
fi

if [[ $DRY_RUN -eq 1 ]]; then
    DEVICE=cpu; PRECISION=fp32; TOKENS=8; ROUNDS_SLOTS="2"; GRAPHS="off"; STAGES=llm; THREADS=$(nproc)
else
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'torch sees no CUDA device')"
    DEVICE=cuda; PRECISION=auto; TOKENS=100; ROUNDS_SLOTS="1 4"; GRAPHS="on off"; STAGES=llm,stream; THREADS=8
fi

if [[ ! -f "$MODEL_DIR/hift.pt" ]]; then
    step "building the full-size random model dir in $MODEL_DIR"
    timeout 240 "$PY" bench/engine_speed.py --json - --build-only "$MODEL_DIR"
else
    step "reusing $MODEL_DIR"
fi

step "CUDA tests (skipped without CUDA)"
timeout 180 "$PY" -m pytest -q -rs tests/test_cv3_scheduler.py tests/test_cv3_precision.py -k "cuda" \
    | tee "$OUT/cuda_tests.txt"

for slots in $ROUNDS_SLOTS; do
    for graphs in $GRAPHS; do
        flag=""; [[ $graphs == off ]] && flag="--no-cuda-graphs"
        json="$OUT/engine_speed_${DEVICE}_slots${slots}_graphs_${graphs}.json"
        step "engine_speed --device $DEVICE --slots $slots graphs $graphs -> $json"
        timeout 150 "$PY" bench/engine_speed.py --model-dir "$MODEL_DIR" --json "$json" --device "$DEVICE" \
            --precision "$PRECISION" --slots "$slots" $flag --tokens "$TOKENS" --stages "$STAGES" --threads "$THREADS" \
            > /dev/null
    done
done

step "summary"
"$PY" - "$OUT" <<'EOF'
import json, pathlib, sys
keys = ["device", "precision", "cuda_graphs", "llm_slots", "llm_batching_mode", "llm_ms_per_token",
        "llm_lone_in_batch_ms_per_token", "llm_single_tokens_per_s", "llm_batch_tokens_per_s",
        "stream_first_chunk_s", "stream_total_s", "oneshot_total_s"]
for path in sorted(pathlib.Path(sys.argv[1]).glob("engine_speed_*.json")):
    result = json.loads(path.read_text())
    print(path.name, {k: result.get(k) for k in keys})
EOF
step "done"
