#!/usr/bin/env bash
# Start N app instances on consecutive ports, each under its own ./monitor.sh (own lock, pid and log dir),
# instance i pinned to GPU i when nvidia-smi lists GPUs; optionally put nginx in front.
#   deploy/local/up.sh 2                                  # ports 7861, 7862; logs/instance-0, logs/instance-1
#   deploy/local/up.sh 3 --base-port 7861 --canary 1 --nginx 127.0.0.1:8080 -- --engine cosyvoice3 ...
#   ./run.sh --instances 2 --engine lite                  # the same through run.sh
#   deploy/local/down.sh                                  # stops every instance (and nginx) it started
# Flags after the options (or after --) go to every instance's app.py. LOG_ROOT (default logs) holds the
# per-instance log dirs; .run/instances/ records what is running for down.sh.
# It returns once every instance answers /ready (exit 0). An instance whose app exits UP_CRASH_EXITS (2)
# times before it is ready, whose monitor stops, or that is not ready within UP_WAIT (600) seconds fails
# the start: each failing instance's reason is printed, every instance started here is stopped, exit 1.
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

UP_WAIT=${UP_WAIT:-600}                 # the first start may install requirements and load a model
UP_CRASH_EXITS=${UP_CRASH_EXITS:-2}

http_ok() {   # http_ok URL: 2xx within 2 s (curl, else python3)
    if command -v curl >/dev/null 2>&1; then
        curl -fsS -m 2 -o /dev/null "$1" 2>/dev/null
    else
        python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2).read()' "$1" 2>/dev/null
    fi
}

http_body() {   # http_body URL: the answer's body whatever its status (for /ready's reason)
    if command -v curl >/dev/null 2>&1; then curl -sS -m 2 "$1" 2>/dev/null; else
        python3 -c '
import sys, urllib.error, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode(errors="replace"))
except urllib.error.HTTPError as err:
    print(err.read().decode(errors="replace"))
except OSError as err:
    print(err)' "$1" 2>/dev/null
    fi
}

running() {   # running PID: alive and not a zombie (an exited child of this shell stays one until reaped)
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [ -n "$state" ] && [ "$state" != "Z" ] && [ "$state" != "X" ]
}

exits_since() {   # exits_since LOG OFFSET: app exits the monitor logged after OFFSET bytes
    tail -c +"$(( $2 + 1 ))" "$1" 2>/dev/null | grep -c "app exited" || true
}

monitor_pids=() ports=() log_dirs=() log_offsets=()
stable=() canaries=()
for ((i = 0; i < count; i++)); do
    port=$((base_port + i))
    if [ -f "$state/monitor-$port.pid" ] && kill -0 "$(cat "$state/monitor-$port.pid")" 2>/dev/null; then
        echo "up.sh: instance $i (port $port) is already running; deploy/local/down.sh stops it" >&2
        exit 1
    fi
    log_dir="$LOG_ROOT/instance-$i"
    mkdir -p "$log_dir"
    log_offsets+=("$(stat -c %s "$log_dir/monitor.log" 2>/dev/null || echo 0)")
    env_args=("COSYVOICE_INSTANCE=instance-$i")
    [ "$gpus" -gt 0 ] && env_args+=("CUDA_VISIBLE_DEVICES=$((i % gpus))")
    env "${env_args[@]}" nohup ./monitor.sh --port "$port" --log-dir "$log_dir" "$@" \
        >> "$log_dir/monitor.out" 2>&1 < /dev/null &
    echo $! > "$state/monitor-$port.pid"
    monitor_pids+=("$!") ports+=("$port") log_dirs+=("$log_dir")
    gpu_note=""
    [ "$gpus" -gt 0 ] && gpu_note=", GPU $((i % gpus))"
    echo "instance-$i: port $port, log $log_dir$gpu_note (monitor pid $!)"
    if [ "$i" -ge $((count - canary)) ]; then canaries+=("127.0.0.1:$port"); else stable+=("127.0.0.1:$port"); fi
done

stop_started() {   # stop every monitor (and its app) this run started
    local pid k
    for k in "${!monitor_pids[@]}"; do
        kill -TERM "${monitor_pids[$k]}" 2>/dev/null
        rm -f "$state/monitor-${ports[$k]}.pid"
    done
    for pid in "${monitor_pids[@]}"; do
        for _ in $(seq 1 300); do running "$pid" || break; sleep 0.2; done
    done
}

wait_until_ready() {   # 0 when every instance answers /ready; else prints each failing one's reason
    local started now k pending failed=() verdict=()
    started=$(date +%s)
    echo "waiting for $count instance(s) to answer /ready (up to ${UP_WAIT} s; the first start installs requirements)"
    while :; do
        pending=0
        now=$(date +%s)
        for k in "${!ports[@]}"; do
            [ -n "${verdict[$k]:-}" ] && continue
            local port=${ports[$k]} dir=${log_dirs[$k]}
            if http_ok "http://127.0.0.1:$port/ready"; then
                verdict[$k]=ready
                echo "instance-$k: ready on port $port ($(( now - started )) s)"
            elif ! running "${monitor_pids[$k]}"; then
                verdict[$k]=failed
                failed+=("instance-$k (port $port): its monitor stopped: $(tail -n 3 "$dir/monitor.out" 2>/dev/null | tr '\n' ' ' || true)")
            elif [ "$(exits_since "$dir/monitor.log" "${log_offsets[$k]}")" -ge "$UP_CRASH_EXITS" ]; then
                verdict[$k]=failed
                failed+=("instance-$k (port $port): crash loop, its app exited $UP_CRASH_EXITS times before it was ready; last: $(grep "app exited" "$dir/monitor.log" | tail -n 1 | cut -d'|' -f4- | sed 's/^ *//' || true)")
            elif [ $(( now - started )) -ge "$UP_WAIT" ]; then
                verdict[$k]=failed
                failed+=("instance-$k (port $port): not ready after ${UP_WAIT} s; /ready says: $(http_body "http://127.0.0.1:$port/ready" | tr -s '\n\t ' ' ' | head -c 300 || true); monitor's last line: $(tail -n 1 "$dir/monitor.log" 2>/dev/null | cut -d'|' -f4- || true)")
            else
                pending=$(( pending + 1 ))
            fi
        done
        [ "$pending" = 0 ] && break
        sleep 1
    done
    [ ${#failed[@]} = 0 ] && return 0
    echo "up.sh: ${#failed[@]} of $count instance(s) failed to start:" >&2
    printf '  %s\n' "${failed[@]}" >&2
    echo "  (logs: $LOG_ROOT/instance-*/monitor.log and app.out)" >&2
    return 1
}

if ! wait_until_ready; then
    stop_started
    echo "up.sh: stopped the $count instance(s) started here; fix the cause above and run it again" >&2
    exit 1
fi

if [ -n "$nginx_listen" ]; then
    STABLE="${stable[*]}" CANARY="${canaries[*]}" LISTEN="$nginx_listen" deploy/nginx/render.sh .run/nginx
    nginx -p "$PWD/.run/nginx" -c "$PWD/.run/nginx/nginx.conf"
    echo "nginx: http://$nginx_listen (canary: deploy/nginx/canary.sh status)"
    deploy/prometheus/render-hooks.sh >/dev/null
    echo "canary rollback hook: webhook -hooks .run/webhook/hooks.json -ip 127.0.0.1 -port 9099 (deploy/README.md)"
fi
