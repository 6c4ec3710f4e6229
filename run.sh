#!/usr/bin/env bash
# Set up (or update) .venv from requirements.txt when needed, then launch the WebUI.
#   ./run.sh                          # embedded engine unless a model dir is present, port 7860, all interfaces
#   ./run.sh --engine cosyvoice3 --model-dir pretrained_models/Fun-CosyVoice3-0.5B --device cuda --precision fp16
#   ./run.sh --setup-only             # only create/update .venv (used by the test command)
#   ./run.sh --instances 2 --engine lite   # N instances on ports 7861.. under monitor.sh (deploy/local/up.sh)
# Every other flag is passed to app.py (python app.py --help lists them).
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=.venv
mkdir -p .run
# The app recreates (or does without) logs/ and outputs/ itself; a missing or read-only one must not stop it here.
mkdir -p logs outputs 2>/dev/null || true

stamp_of() { sha1sum requirements.txt | cut -d' ' -f1; }

if [ ! -x "$VENV/bin/python" ]; then
    echo "[run.sh] creating $VENV with $($PYTHON --version 2>&1)"
    if ! "$PYTHON" -m venv "$VENV"; then
        echo "[run.sh] could not create a virtual environment; on Debian/Ubuntu: apt-get install python3-venv" >&2
        exit 1
    fi
fi
if [ "$(cat "$VENV/.requirements.sha1" 2>/dev/null)" != "$(stamp_of)" ]; then
    echo "[run.sh] installing requirements into $VENV (first run takes a few minutes)"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q --upgrade pip >/dev/null 2>&1 || true
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r requirements.txt
    stamp_of > "$VENV/.requirements.sha1"
fi

if [ "${1:-}" = "--setup-only" ]; then
    # The CPU decode kernel is compiled once (about 10 s, cached); without a C++ compiler the
    # cosyvoice3 engine decodes on oneDNN instead and says so in the log.
    "$VENV/bin/python" -m cosyvoice.engines.cosyvoice3.cpu_decode_kernel
    exit 0
fi
if [ "${1:-}" = "--instances" ]; then     # several instances, one per GPU: deploy/local/up.sh does it
    shift
    exec deploy/local/up.sh "$@"
fi

# Bind all interfaces unless the caller chose a host (app.py alone binds 127.0.0.1).
host_args=(--host 0.0.0.0)
port=7860
prev=""
for arg in "$@"; do
    case "$arg" in
        --host|--host=*) host_args=() ;;
        --port=*) port=${arg#--port=} ;;
    esac
    [ "$prev" = "--port" ] && port=$arg
    prev=$arg
done

echo $$ > ".run/app-$port.pid"   # exec keeps this pid: it is the app's
exec "$VENV/bin/python" app.py "${host_args[@]}" "$@"
