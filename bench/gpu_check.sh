#!/usr/bin/env bash
# GPU check for the CosyVoice3 engine, for one lent H100/H200 (Python 3.12, torch 2.11, no package
# registry, no ../shared). Prepare here first with bench/gpu_bundle.sh, then run it there with
# carry=["bench/gpu_carry"]:
#
#   bench/gpu_check.sh [--dry-run] [--out DIR (default $OUT, else bench/results/gpu_check)]
#
#   1. packages the machine lacks, from the carried wheels (installed into bench/gpu_carry/site);
#   2. the full-size random-weight model dir, built on the machine (Qwen2-0.5B-shaped LLM, 22-layer DiT);
#   3. the CUDA tests: the captured decode step against the plain one, after allocator churn;
#   4. parity on CUDA in float32: the tiny fixture's llm, flow, hift and tts cases, official tolerances;
#   5. bench/gpu_figures.py: fp16 and auto, graphs on/off, slots 1/4/16, 1/4/16 concurrent streams,
#      peak GPU memory, agreement with CPU float32 (teacher-forced tokens, mel error).
# Step limits add up to 525 s (the run tool allows 600 s a command); a normal H100 run takes ~5 min.
#
# --dry-run (here, no GPU): the same steps on CPU in a Python 3.12 venv made only from the carried
# wheels plus bench/gpu_standin (torch 2.11, numpy, onnxruntime: what the GPU machine already has):
# the full-size builder runs; tests, parity and figures run on CPU at small sizes on the tiny fixture.
set -euo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
OUT="${OUT:-bench/results/gpu_check}"     # the run tool's $OUT: what is written there comes back
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --out) OUT="$2"; shift ;;
        *) echo "unknown argument: $1 (use --dry-run, --out DIR)" >&2; exit 2 ;;
    esac
    shift
done
CARRY=bench/gpu_carry
export COSYVOICE_SHARED="$PWD/$CARRY/shared" COSYVOICE_TINY_ONNX="$PWD/$CARRY/onnx"
FIXTURE="$COSYVOICE_SHARED/fixtures/cosyvoice3-tiny"
WORK="${TMPDIR:-/tmp}/cv3-gpu-check"            # the big model dir stays out of $OUT
MODEL_DIR="$WORK/Fun-CosyVoice3-0.5B-random"
mkdir -p "$OUT" "$WORK"
started=$(date +%s)
step() { echo "[gpu_check +$(( $(date +%s) - started ))s] $*" >&2; }
[[ -d "$CARRY/wheels" ]] || { echo "no $CARRY/wheels: run bench/gpu_bundle.sh first (here, with PyPI)" >&2; exit 1; }

if [[ $DRY_RUN -eq 1 ]]; then
    VENV=bench/gpu_standin/venv
    if [[ ! -x "$VENV/bin/python" ]]; then
        step "making the Python 3.12 venv from the carried and stand-in wheels"
        PYENV_VERSION=3.12.1 python3.12 -m venv "$VENV"
        "$VENV/bin/python" -m pip install -q --no-index --no-deps bench/gpu_standin/*.whl "$CARRY"/wheels/*.whl
    fi
    PY="$VENV/bin/python"
else
    PY=python3
fi

step "python: $PY; installing what is missing from $CARRY/wheels"
SITE="$CARRY/site"
missing=$("$PY" - <<'EOF'
import importlib.util
need = {"loguru": "loguru", "soundfile": "soundfile", "cffi": "cffi", "pycparser": "pycparser", "pytest": "pytest",
        "pluggy": "pluggy", "iniconfig": "iniconfig", "packaging": "packaging", "pygments": "pygments",
        "tokenizers": "tokenizers",
        "yaml": "pyyaml"}
print(" ".join(wheel for module, wheel in need.items() if importlib.util.find_spec(module) is None))
EOF
)
for wheel in $missing; do
    "$PY" -m pip install -q --no-index --no-deps --upgrade --target "$SITE" "$CARRY"/wheels/"$wheel"-*.whl
done
export PYTHONPATH="$PWD/$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import torch, numpy, onnxruntime, loguru, soundfile, tokenizers, yaml, pytest; print('torch', torch.__version__)" \
    || { echo "a package the check needs is missing and not carried (see the import error above)" >&2; exit 1; }

if [[ $DRY_RUN -eq 1 ]]; then
    SCALE=6    # step limits are sized for the GPU machine; this shared CPU box is several times slower
    DEVICE=cpu; PRECISIONS=fp32; SLOTS=2; STREAMS=1,2; TOKENS=6; AGREE=4; FIGURES_DIR="$WORK/tiny-model"
    rm -rf "$FIGURES_DIR"; cp -r "$FIXTURE" "$FIGURES_DIR"; cp "$COSYVOICE_TINY_ONNX"/*.onnx "$FIGURES_DIR/"
else
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'torch sees no CUDA device')"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt" >&2 || true
    SCALE=1
    DEVICE=cuda; PRECISIONS=fp16,auto; SLOTS=4,16; STREAMS=1,4,16; TOKENS=100; AGREE=50; FIGURES_DIR="$MODEL_DIR"
fi

if [[ ! -f "$MODEL_DIR/hift.pt" ]]; then
    step "building the full-size random model dir in $MODEL_DIR"
    timeout $((150 * SCALE)) "$PY" bench/engine_speed.py --json - --threads "$(nproc)" --build-only "$MODEL_DIR"
fi

step "CUDA tests (skipped without CUDA)"
timeout $((75 * SCALE)) "$PY" -m pytest -q -rs -p no:cacheprovider tests/engine/test_cv3_captured_step.py | tee "$OUT/cuda_tests.txt"

step "parity on $DEVICE (float32, official tolerances)"
timeout $((90 * SCALE)) "$PY" -m cosyvoice.parity --model-dir "$FIXTURE" --audio-dir "$COSYVOICE_SHARED/audio" --device "$DEVICE" \
    --only llm flow hift tts | tee "$OUT/parity_$DEVICE.txt"

step "figures: $PRECISIONS on $DEVICE, model $FIGURES_DIR"
timeout $((210 * SCALE)) "$PY" bench/gpu_figures.py --model-dir "$FIGURES_DIR" --json "$OUT/gpu_figures.json" --device "$DEVICE" \
    --precisions "$PRECISIONS" --slots "$SLOTS" --streams "$STREAMS" --tokens "$TOKENS" --agreement-tokens "$AGREE" \
    > "$OUT/gpu_figures.stdout"
step "done: $OUT/gpu_figures.json, $OUT/parity_$DEVICE.txt, $OUT/cuda_tests.txt"
