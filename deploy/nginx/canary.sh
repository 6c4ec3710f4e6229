#!/usr/bin/env bash
# Canary control for the nginx front of CosyVoice Studio. Rewrites only canary-weight.conf, checks the
# whole config with `nginx -t`, reloads nginx, and waits until nginx serves the new weight.
#   deploy/nginx/canary.sh status
#   deploy/nginx/canary.sh set-weight 25     # 25 % of sessions to the canary
#   deploy/nginx/canary.sh promote           # 100 % to the canary (then upgrade stable and roll back)
#   deploy/nginx/canary.sh rollback          # 0 %: every session back on stable at once
# The config directory is --conf-dir DIR, else $NGINX_CONF_DIR, else .run/nginx in the checkout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
conf_dir=${NGINX_CONF_DIR:-$here/../../.run/nginx}
if [ "${1:-}" = "--conf-dir" ]; then conf_dir=$2; shift 2; fi
weights="$conf_dir/canary-weight.conf"

die() { echo "canary.sh: $*" >&2; exit 1; }

current_weight() { sed -n 's/^# canary-weight: \([0-9.]*\).*/\1/p' "$weights" 2>/dev/null | head -1; }

write_weight() {   # write_weight P FILE
    local p=$1 file=$2
    {
        echo "# canary-weight: $p   (written by canary.sh $(date '+%Y-%m-%d %H:%M:%S'); edit with canary.sh)"
        echo "split_clients \"\${route_key}\" \$split_channel {"
        if [ "$p" = 0 ]; then :;
        elif [ "$p" = 100 ]; then echo "    *   canary;";
        else echo "    $p% canary;"; fi
        [ "$p" = 100 ] || echo "    *   stable;"
        echo "}"
        echo "map \$route_key \$canary_weight {"
        echo "    default \"$p\";"
        echo "}"
    } > "$file"
}

nginx_cmd() { nginx -p "$conf_dir" -c "$conf_dir/nginx.conf" "$@"; }

status_url() {
    local listen
    listen=$(sed -n 's/^ *listen \([^ ;]*\).*/\1/p' "$conf_dir/nginx.conf" | head -1)
    case "$listen" in *:*) ;; *) listen="127.0.0.1:$listen" ;; esac
    echo "http://${listen/0.0.0.0/127.0.0.1}/lb/weight"
}

served_weight() { curl -fsS -m 2 "$(status_url)" 2>/dev/null | tr -d '[:space:]'; }

running() { [ -f "$conf_dir/nginx.pid" ] && kill -0 "$(cat "$conf_dir/nginx.pid")" 2>/dev/null; }

worker_pids() {   # the master's worker processes now (from /proc: no ps needed in slim images)
    local master stat pid
    master=$(cat "$conf_dir/nginx.pid" 2>/dev/null) || return 0
    for stat in /proc/[0-9]*/stat; do
        pid=${stat#/proc/}; pid=${pid%/stat}
        [ "$(awk '{print $4}' "$stat" 2>/dev/null)" = "$master" ] || continue
        tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q "worker process" && echo "$pid"
    done
}

old_workers_left() {   # old_workers_left PIDS...: how many of them still run
    local n=0 pid
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null && n=$((n + 1)); done
    echo "$n"
}

apply_weight() {   # apply_weight P: write, test, reload, wait; the old file comes back if the test fails
    local p=$1
    [[ "$p" =~ ^[0-9]+([.][0-9]+)?$ ]] && awk -v p="$p" 'BEGIN{exit !(p>=0 && p<=100)}' \
        || die "weight must be a percentage from 0 to 100, got '$p'"
    [ -f "$conf_dir/nginx.conf" ] || die "no nginx.conf in $conf_dir; render it first with deploy/nginx/render.sh"
    local before
    before=$(current_weight)
    cp "$weights" "$weights.bak" 2>/dev/null || true
    write_weight "$p" "$weights.new"
    mv "$weights.new" "$weights"
    if ! nginx_cmd -t -q; then
        [ -f "$weights.bak" ] && mv "$weights.bak" "$weights"
        die "nginx -t rejected the new weights; kept ${before:-the old} %"
    fi
    rm -f "$weights.bak"
    if ! running; then
        echo "canary weight ${before:-?} % -> $p % written; nginx is not running (it applies on start)"
        return 0
    fi
    local old
    old=$(worker_pids)
    nginx_cmd -s reload
    local served=""
    for _ in $(seq 1 50); do     # reload is asynchronous: wait for new workers to answer
        [ "$(served_weight)" = "$p" ] && { served=yes; break; }
        sleep 0.1
    done
    [ -n "$served" ] || die "nginx reloaded but $(status_url) does not show $p % yet; see $conf_dir/logs/error.log"
    # Old workers may still take a new connection for a moment, and keep their open ones (streams)
    # until those end: a session that starts there and moves on would cross channels. Wait for them.
    # shellcheck disable=SC2086
    for _ in $(seq 1 100); do
        [ "$(old_workers_left $old)" = 0 ] && { echo "canary weight ${before:-?} % -> $p % (nginx reloaded)"; return 0; }
        sleep 0.1
    done
    # shellcheck disable=SC2086
    echo "canary weight ${before:-?} % -> $p % (nginx reloaded; $(old_workers_left $old) old worker(s) still finish open connections at the old weight)"
}

case "${1:-status}" in
    status)
        echo "canary weight: $(current_weight) % of sessions (file $weights)"
        if running; then echo "nginx: running (pid $(cat "$conf_dir/nginx.pid")), serving $(served_weight) %";
        else echo "nginx: not running"; fi
        sed -n '/^upstream cosyvoice_\(stable\|canary\) {/,/^}/p' "$conf_dir/upstreams.conf" | grep -E "upstream|server"
        ;;
    set-weight) apply_weight "${2:?usage: canary.sh set-weight PERCENT}" ;;
    promote)    apply_weight 100 ;;
    rollback)   apply_weight 0 ;;
    write-weight) write_weight "${2:?}" "$weights" ;;   # used by render.sh; no test, no reload
    *) die "unknown command '$1' (status | set-weight P | promote | rollback)" ;;
esac
