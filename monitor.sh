#!/usr/bin/env bash
# Watchdog: keeps the app (started through run.sh) alive and answering.
#   ./monitor.sh [run.sh flags…]        e.g. ./monitor.sh --port 7861 --engine lite --log-dir logs/7861
# - one monitor per port (lock file); starts the app if it is not running;
# - probes http://127.0.0.1:PORT/health every 5 s (MONITOR_INTERVAL);
# - restarts on process exit, and after 3 failed probes in a row (a hang), with back-off;
#   the reason goes into the monitor log: the last ERROR line (or, for a crash before logging started,
#   the last line) of what THIS app wrote to <log dir>/app.out since this start, never a line of
#   runtime.log, which the CLI, tests and other instances may share;
# - a crash loop (MONITOR_CRASH_LIMIT exits within MONITOR_CRASH_WINDOW s) is logged as ERROR and
#   retried slowly (every MONITOR_SLOW_RETRY s) until it starts working again;
# - logs every action to <log dir>/monitor.log (never a secret: --auth and --api-key values are masked;
#   --api-key-file is passed on as a path and never read here), and
#   recreates the log folder if it disappears; SIGTERM/SIGINT stops the app cleanly and exits.
set -uo pipefail
cd "$(dirname "$0")"
mkdir -p .run

INTERVAL=${MONITOR_INTERVAL:-5}
MAX_FAILS=${MONITOR_MAX_FAILS:-3}
PROBE_TIMEOUT=${MONITOR_PROBE_TIMEOUT:-2}
STARTUP_GRACE=${MONITOR_STARTUP_GRACE:-600}   # first start may install requirements
BACKOFF_MAX=${MONITOR_BACKOFF_MAX:-60}
CRASH_LIMIT=${MONITOR_CRASH_LIMIT:-5}
CRASH_WINDOW=${MONITOR_CRASH_WINDOW:-600}
SLOW_RETRY=${MONITOR_SLOW_RETRY:-300}
STOP_TIMEOUT=${MONITOR_STOP_TIMEOUT:-45}       # the app's --grace-seconds (30) plus room to exit

port=7860
log_dir=logs
prev=""
shown=()        # the arguments as they may be written down: secret values masked
for arg in "$@"; do
    case "$arg" in
        --port=*) port=${arg#--port=} ;;
        --log-dir=*) log_dir=${arg#--log-dir=} ;;
    esac
    [ "$prev" = "--port" ] && port=$arg
    [ "$prev" = "--log-dir" ] && log_dir=$arg
    case "$prev:$arg" in
        --auth:*|--api-key:*) shown+=("***") ;;
        *:--auth=*) shown+=("--auth=***") ;;
        *:--api-key=*) shown+=("--api-key=***") ;;
        *) shown+=("$arg") ;;
    esac
    prev=$arg
done

LOG=$log_dir/monitor.log
log() {
    mkdir -p "$log_dir" 2>/dev/null
    local line
    line=$(printf '%s | %-7s | port %s | %s' "$(date '+%Y-%m-%d %H:%M:%S')" "$1" "$port" "$2")
    printf '%s\n' "$line" >> "$LOG" 2>/dev/null || printf '%s\n' "$line" >&2
}

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
sleep_pid=""
alive() {
    # A dead child stays a zombie until reaped: read its state rather than trusting kill -0.
    [ -n "$app_pid" ] || return 1
    local state
    state=$(awk '{print $3}' "/proc/$app_pid/stat" 2>/dev/null) || return 1
    [ -n "$state" ] && [ "$state" != "Z" ] && [ "$state" != "X" ]
}

pause() {   # an interruptible sleep: SIGTERM ends it at once and leaves no sleeping child behind
    sleep "$1" &
    sleep_pid=$!
    wait "$sleep_pid" 2>/dev/null
    sleep_pid=""
}

out_file=""
out_offset=0
last_error() {   # this app's own reason for exiting, as one short printable line
    # Only what this start of the app wrote (app.out from the offset taken at start): runtime.log may be
    # shared with the CLI, tests or another instance, and an older run's error is not this one's.
    # An ERROR/CRITICAL line must begin like one of the app's own lines (time | level | req=; the app
    # escapes line breaks in what users send, so such a line cannot be forged). When the app crashed
    # before its log started (bad flag, import error), the last line it wrote: a traceback's last line.
    [ -n "$out_file" ] && [ -f "$out_file" ] || return 0
    local own line stamp='^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9:.]+ \| [A-Z]+ +\| req='
    own=$(tail -c +"$(( out_offset + 1 ))" "$out_file" 2>/dev/null | tail -n 400 | tr -d '\000-\010\013-\037\177')
    line=$(printf '%s\n' "$own" | grep -E "$stamp" | grep -E '^[^|]+\| (ERROR|CRITICAL) ' | tail -n 1)
    if [ -z "$line" ] && ! printf '%s\n' "$own" | grep -qE "$stamp"; then
        line=$(printf '%s\n' "$own" | grep -v '^[[:space:]]*$' | tail -n 1)
    fi
    printf '%s' "$line" | cut -c1-400
}

start_app() {
    # The app's output goes to <log dir>/app.out when the folder can be (re)made; the app starts either way.
    local out=/dev/null
    out_file="" out_offset=0
    if mkdir -p "$log_dir" 2>/dev/null && : >> "$log_dir/app.out" 2>/dev/null; then
        out=$log_dir/app.out
        out_file=$out
        out_offset=$(stat -c %s "$out" 2>/dev/null || echo 0)
    fi
    ./run.sh "$@" >> "$out" 2>&1 &
    app_pid=$!
    started_at=$(date +%s)
    healthy_once=0
    log INFO "started app (pid $app_pid): ./run.sh ${shown[*]}"
    [ "$out" = /dev/null ] && log WARNING "cannot write $log_dir/app.out; the app's own output is discarded"
}

stop_app() {   # stop_app [kill]: "kill" skips the polite SIGTERM (a hung app cannot shut down)
    [ -n "$app_pid" ] || return 0
    if alive && [ "${1:-}" = "kill" ]; then
        kill -KILL "$app_pid" 2>/dev/null
    elif alive; then
        kill -CONT "$app_pid" 2>/dev/null   # a stopped process cannot act on SIGTERM
        kill -TERM "$app_pid" 2>/dev/null
        for _ in $(seq 1 $(( STOP_TIMEOUT * 5 ))); do alive || break; sleep 0.2; done
        if alive; then
            log WARNING "app (pid $app_pid) ignored SIGTERM for ${STOP_TIMEOUT} s; killing it"
            kill -KILL "$app_pid" 2>/dev/null
        fi
    fi
    wait "$app_pid" 2>/dev/null
    app_pid=""
}

shutdown() {
    [ -n "$sleep_pid" ] && kill "$sleep_pid" 2>/dev/null
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
crashes=()      # times of recent exits, for crash-loop detection
start_app "$@"
while true; do
    pause "$INTERVAL"
    now=$(date +%s)
    reason=""
    if ! alive; then
        wait "$app_pid" 2>/dev/null; code=$?
        why=$(last_error)
        how="code $code"
        [ "$code" -gt 128 ] && how="killed by signal $(( code - 128 )) ($(kill -l $(( code - 128 )) 2>/dev/null))"
        reason="app exited (pid $app_pid, $how)${why:+; its last error: $why}"
        crashes+=("$now")
    elif probe; then
        if [ "$healthy_once" = 0 ]; then log INFO "app is healthy ($(( now - started_at )) s after start)"; fi
        healthy_once=1
        fails=0
        if [ $(( now - last_restart )) -gt 120 ]; then backoff=1; crashes=(); fi
        continue
    elif [ "$healthy_once" = 0 ] && ! listening && [ $(( now - started_at )) -lt "$STARTUP_GRACE" ]; then
        continue   # not listening yet: installing requirements or loading the model
    else
        fails=$(( fails + 1 ))
        log WARNING "health probe failed ($fails/$MAX_FAILS)"
        [ "$fails" -ge "$MAX_FAILS" ] && reason="app not answering /health ($fails failed probes in a row; hung?)"
    fi
    if [ -n "$reason" ]; then
        recent=()
        for t in "${crashes[@]}"; do [ $(( now - t )) -le "$CRASH_WINDOW" ] && recent+=("$t"); done
        crashes=("${recent[@]}")
        wait_s=$backoff
        if [ "${#crashes[@]}" -ge "$CRASH_LIMIT" ]; then
            wait_s=$SLOW_RETRY
            log ERROR "$reason; crash loop: ${#crashes[@]} exits within ${CRASH_WINDOW} s. Fix the cause above; retrying only every ${SLOW_RETRY} s"
        else
            log ERROR "$reason; restarting in ${wait_s}s"
        fi
        stop_app kill
        pause "$wait_s"
        backoff=$(( backoff * 2 > BACKOFF_MAX ? BACKOFF_MAX : backoff * 2 ))
        fails=0
        last_restart=$(date +%s)
        start_app "$@"
        log INFO "restarted app (pid $app_pid)"
    fi
done
