#!/usr/bin/env bash
# Watchdog: keeps the app (started through run.sh) alive and answering.
#   ./monitor.sh [run.sh flags…]        e.g. ./monitor.sh --port 7861 --engine lite
# - one monitor per port (lock file); starts the app if it is not running;
# - probes http://127.0.0.1:PORT/health every 5 s (MONITOR_INTERVAL);
# - restarts on process exit, and after 3 failed probes in a row (a hang), with back-off;
# - logs every action to logs/monitor.log; SIGTERM/SIGINT stops the app cleanly and exits.
set -uo pipefail
cd "$(dirname "$0")"
mkdir -p logs .run

INTERVAL=${MONITOR_INTERVAL:-5}
MAX_FAILS=${MONITOR_MAX_FAILS:-3}
PROBE_TIMEOUT=${MONITOR_PROBE_TIMEOUT:-2}
STARTUP_GRACE=${MONITOR_STARTUP_GRACE:-600}   # first start may install requirements
BACKOFF_MAX=${MONITOR_BACKOFF_MAX:-60}

port=7860
prev=""
for arg in "$@"; do
    case "$arg" in --port=*) port=${arg#--port=} ;; esac
    [ "$prev" = "--port" ] && port=$arg
    prev=$arg
done

LOG=logs/monitor.log
log() { printf '%s | %-7s | port %s | %s\n' "$(date '+%Y-%m-%d %H:%M:%S')" "$1" "$port" "$2" >> "$LOG"; }

exec 9> ".run/monitor-$port.lock"
if ! flock -n 9; then
    echo "monitor.sh: another monitor already watches port $port (.run/monitor-$port.lock)" >&2
    exit 1
fi

probe() {
    local url="http://127.0.0.1:$port/health"
    if command -v curl >/dev/null 2>&1; then
        curl -fsS -m "$PROBE_TIMEOUT" -o /dev/null "$url" 2>/dev/null
    else
        python3 - "$url" "$PROBE_TIMEOUT" <<'PY' 2>/dev/null
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])).read()
PY
    fi
}

listening() {
    # Connecting succeeds once the app has bound its port, even if it then hangs (the kernel
    # completes the handshake); before that, the app is still installing or loading.
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
}

app_pid=""
alive() {
    # A dead child stays a zombie until reaped: read its state rather than trusting kill -0.
    [ -n "$app_pid" ] || return 1
    local state
    state=$(awk '{print $3}' "/proc/$app_pid/stat" 2>/dev/null) || return 1
    [ -n "$state" ] && [ "$state" != "Z" ] && [ "$state" != "X" ]
}

start_app() {
    ./run.sh "$@" >> logs/app.out 2>&1 &
    app_pid=$!
    started_at=$(date +%s)
    healthy_once=0
    log INFO "started app (pid $app_pid): ./run.sh $*"
}

stop_app() {   # stop_app [kill]: "kill" skips the polite SIGTERM (a hung app cannot shut down)
    [ -n "$app_pid" ] || return 0
    if alive && [ "${1:-}" = "kill" ]; then
        kill -KILL "$app_pid" 2>/dev/null
    elif alive; then
        kill -CONT "$app_pid" 2>/dev/null   # a stopped process cannot act on SIGTERM
        kill -TERM "$app_pid" 2>/dev/null
        for _ in $(seq 1 50); do alive || break; sleep 0.2; done
        if alive; then
            log WARNING "app (pid $app_pid) ignored SIGTERM for 10 s; killing it"
            kill -KILL "$app_pid" 2>/dev/null
        fi
    fi
    wait "$app_pid" 2>/dev/null
    app_pid=""
}

shutdown() {
    log INFO "monitor stopping (signal); stopping app"
    stop_app
    log INFO "monitor stopped"
    exit 0
}
trap shutdown TERM INT

log INFO "monitor started (pid $$), probing /health every ${INTERVAL}s"
if listening; then
    log ERROR "port $port is already in use (an app started without the monitor?); stop it or pick another --port"
    echo "monitor.sh: port $port is already in use; stop what runs there or pass another --port" >&2
    exit 1
fi

backoff=1
fails=0
last_restart=0
start_app "$@"
while true; do
    sleep "$INTERVAL" & wait $!
    now=$(date +%s)
    reason=""
    if ! alive; then
        wait "$app_pid" 2>/dev/null; code=$?
        reason="app exited (pid $app_pid, code $code)"
    elif probe; then
        if [ "$healthy_once" = 0 ]; then log INFO "app is healthy ($(( now - started_at )) s after start)"; fi
        healthy_once=1
        fails=0
        if [ $(( now - last_restart )) -gt 120 ]; then backoff=1; fi
        continue
    elif [ "$healthy_once" = 0 ] && ! listening && [ $(( now - started_at )) -lt "$STARTUP_GRACE" ]; then
        continue   # not listening yet: installing requirements or loading the model
    else
        fails=$(( fails + 1 ))
        log WARNING "health probe failed ($fails/$MAX_FAILS)"
        [ "$fails" -ge "$MAX_FAILS" ] && reason="app not answering /health ($fails failed probes in a row; hung?)"
    fi
    if [ -n "$reason" ]; then
        log ERROR "$reason; restarting in ${backoff}s"
        stop_app kill
        sleep "$backoff" & wait $!
        backoff=$(( backoff * 2 > BACKOFF_MAX ? BACKOFF_MAX : backoff * 2 ))
        fails=0
        last_restart=$(date +%s)
        start_app "$@"
        log INFO "restarted app (pid $app_pid)"
    fi
done
