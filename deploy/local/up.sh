#!/usr/bin/env bash
# Start N app instances on consecutive ports, each under its own ./monitor.sh (own lock, pid and log dir),
# instance i pinned to GPU i when nvidia-smi lists GPUs; optionally put nginx in front.
#   deploy/local/up.sh 2                                  # ports 7861, 7862; logs/instance-0, logs/instance-1
#   deploy/local/up.sh 3 --base-port 7861 --canary 1 --nginx 127.0.0.1:8080 -- --engine cosyvoice3 ...
#   ./run.sh --instances 2 --engine lite                  # the same through run.sh
#   deploy/local/down.sh                                  # stops every instance (and nginx) it started
# Flags after the options (or after --) go to every instance's app.py. LOG_ROOT (default logs) holds the
# per-instance log dirs; .run/instances/ records what is running for down.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."

count=${1:?usage: up.sh N [--base-port P] [--canary K] [--nginx HOST:PORT] [--] [app flags]}
shift
[[ "$count" =~ ^[1-9][0-9]*$ ]] || { echo "up.sh: N must be a positive number, got '$count'" >&2; exit 1; }
base_port=7861 canary=0 nginx_listen=""
while [ $# -gt 0 ]; do
    case "$1" in
        --base-port) base_port=$2; shift 2 ;;
        --canary) canary=$2; shift 2 ;;
        --nginx) nginx_listen=$2; shift 2 ;;
        --) shift; break ;;
        *) break ;;
    esac
done
LOG_ROOT=${LOG_ROOT:-logs}
case " $* " in *" --host "*|*" --host="*) ;; *) set -- --host 127.0.0.1 "$@" ;; esac   # nginx is the front door
state=.run/instances
mkdir -p "$state" "$LOG_ROOT"

gpus=0
if command -v nvidia-smi >/dev/null 2>&1; then
    gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
fi
if [ "$gpus" -gt 0 ] && [ "$count" -gt "$gpus" ]; then
    echo "up.sh: $count instances but $gpus GPU(s): instances beyond GPU $((gpus - 1)) share GPUs" >&2
fi

stable=() canaries=()
for ((i = 0; i < count; i++)); do
    port=$((base_port + i))
    if [ -f "$state/monitor-$port.pid" ] && kill -0 "$(cat "$state/monitor-$port.pid")" 2>/dev/null; then
        echo "up.sh: instance $i (port $port) is already running; deploy/local/down.sh stops it" >&2
        exit 1
    fi
    log_dir="$LOG_ROOT/instance-$i"
    mkdir -p "$log_dir"
    env_args=("COSYVOICE_INSTANCE=instance-$i")
    [ "$gpus" -gt 0 ] && env_args+=("CUDA_VISIBLE_DEVICES=$((i % gpus))")
    env "${env_args[@]}" nohup ./monitor.sh --port "$port" --log-dir "$log_dir" "$@" \
        >> "$log_dir/monitor.out" 2>&1 < /dev/null &
    echo $! > "$state/monitor-$port.pid"
    gpu_note=""
    [ "$gpus" -gt 0 ] && gpu_note=", GPU $((i % gpus))"
    echo "instance-$i: port $port, log $log_dir$gpu_note (monitor pid $!)"
    if [ "$i" -ge $((count - canary)) ]; then canaries+=("127.0.0.1:$port"); else stable+=("127.0.0.1:$port"); fi
done

if [ -n "$nginx_listen" ]; then
    STABLE="${stable[*]}" CANARY="${canaries[*]}" LISTEN="$nginx_listen" deploy/nginx/render.sh .run/nginx
    nginx -p "$PWD/.run/nginx" -c "$PWD/.run/nginx/nginx.conf"
    echo "nginx: http://$nginx_listen (canary: deploy/nginx/canary.sh status)"
fi
