#!/usr/bin/env bash
# Stop everything deploy/local/up.sh started: each monitor (which stops its app cleanly), then nginx.
set -uo pipefail
cd "$(dirname "$0")/../.."
state=.run/instances
if [ -f .run/nginx/nginx.pid ] && kill -0 "$(cat .run/nginx/nginx.pid)" 2>/dev/null; then
    nginx -p "$PWD/.run/nginx" -c "$PWD/.run/nginx/nginx.conf" -s quit && echo "nginx: stopping"
fi
shopt -s nullglob
pids=()
for file in "$state"/monitor-*.pid; do
    pid=$(cat "$file")
    port=${file##*monitor-}; port=${port%.pid}
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" && pids+=("$pid") && echo "port $port: stopping monitor $pid and its app"
    fi
    rm -f "$file"
done
for pid in "${pids[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && echo "monitor $pid still running after 20 s; kill it with: kill -9 $pid" >&2
done
[ ${#pids[@]} -eq 0 ] && echo "nothing was running"
exit 0
