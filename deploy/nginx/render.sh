#!/usr/bin/env bash
# Render a ready-to-run nginx config for CosyVoice Studio into CONF_DIR.
#   STABLE="127.0.0.1:7861 127.0.0.1:7862" CANARY="127.0.0.1:7863" LISTEN=127.0.0.1:8080 \
#       deploy/nginx/render.sh /etc/nginx/cosyvoice        # or any directory you own
# Then: nginx -p CONF_DIR -c CONF_DIR/nginx.conf            (add -g 'daemon off;' to keep it in front)
# Settings (environment): STABLE, CANARY (space-separated host:port; CANARY may be empty), LISTEN,
# NGINX_USER (workers' user when started as root; they must be able to enter CONF_DIR/tmp),
# WORKERS (auto), MAX_FAILS (2), FAIL_TIMEOUT (30s), CANARY_WEIGHT (10, only when no weights file yet),
# KEEPALIVE (16 idle connections per API group and worker), KEEPALIVE_TIMEOUT (4s; below the app's 5 s).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
conf_dir=${1:?usage: render.sh CONF_DIR}
mkdir -p "$conf_dir"/logs "$conf_dir"/tmp
conf_dir=$(cd "$conf_dir" && pwd)

STABLE=${STABLE:?set STABLE to the stable instances, e.g. STABLE=\"127.0.0.1:7861 127.0.0.1:7862\"}
CANARY=${CANARY:-}
LISTEN=${LISTEN:-127.0.0.1:8080}
WORKERS=${WORKERS:-auto}
MAX_FAILS=${MAX_FAILS:-2}
FAIL_TIMEOUT=${FAIL_TIMEOUT:-30s}
KEEPALIVE=${KEEPALIVE:-16}
KEEPALIVE_TIMEOUT=${KEEPALIVE_TIMEOUT:-4s}
USER_LINE=""
[ -n "${NGINX_USER:-}" ] && USER_LINE="user $NGINX_USER;\n"

servers() {   # servers ADDR...: one server line per instance, with passive health
    for addr in "$@"; do
        echo "    server $addr max_fails=$MAX_FAILS fail_timeout=$FAIL_TIMEOUT;"
    done
}

canary_servers() {   # like servers, plus a placeholder when there is one canary (see below)
    servers "$@"
    if [ "$#" = 1 ]; then
        # nginx ignores max_fails in a one-server group and retries nothing there, so a failing canary
        # would never be drained. A second server that can never answer (a socket nobody creates) fixes
        # both: the first request hashed to it is refused and retried on the canary, then it stays out.
        echo "    # placeholder so that max_fails and retries apply to a single canary (see render.sh)"
        # (Under /dev/null, which is no folder: it can never exist, and the path stays within the
        # 107 bytes a socket path may have wherever CONF_DIR is.)
        echo "    server unix:/dev/null/no-such-canary.sock max_fails=1 fail_timeout=3600s;"
    fi
}

keepalive_lines() {   # idle connections kept open to the instances of an API group
    # Closed by nginx before the app's own idle timeout (uvicorn: 5 s), so nginx never reuses a
    # connection the app is closing at that moment. A kept connection to a process that died is
    # refused or reset on its next use: a synthesis POST is then re-sent (nginx.conf.in, /v1/audio/).
    echo "    keepalive $KEEPALIVE;"
    echo "    keepalive_timeout ${KEEPALIVE_TIMEOUT};"
}

# shellcheck disable=SC2086   # word splitting of the address lists is intended
{
    echo "# Written by deploy/nginx/render.sh; re-run it to change the instances."
    echo "# Gradio sessions: sticky by the cv_route cookie (consistent hash, one shared zone per group)."
    echo "upstream cosyvoice_stable {"
    echo "    zone cosyvoice_stable 64k;"
    echo "    hash \$route_key consistent;"
    servers $STABLE
    echo "}"
    echo "upstream cosyvoice_canary {"
    echo "    zone cosyvoice_canary 64k;"
    echo "    hash \$route_key consistent;"
    if [ -n "$CANARY" ]; then canary_servers $CANARY; else
        echo "    # no canary instances: the canary channel is served by the stable ones"
        servers $STABLE
    fi
    echo "}"
    echo "# Stateless routes (/version, /v1/): least connections; a drained canary falls back to stable."
    echo "upstream cosyvoice_stable_api {"
    echo "    zone cosyvoice_stable_api 64k;"
    echo "    least_conn;"
    servers $STABLE
    keepalive_lines
    echo "}"
    echo "upstream cosyvoice_canary_api {"
    echo "    zone cosyvoice_canary_api 64k;"
    echo "    least_conn;"
    if [ -n "$CANARY" ]; then canary_servers $CANARY; else servers $STABLE; fi
    keepalive_lines
    echo "}"
} > "$conf_dir/upstreams.conf"

case "$conf_dir" in *[\"\\\|\&]*) echo "render.sh: CONF_DIR must not contain \", \\, | or &: $conf_dir" >&2; exit 1 ;; esac
sed -e "s|@USER_LINE@|$USER_LINE|" -e "s|@LISTEN@|$LISTEN|g" -e "s|@WORKERS@|$WORKERS|g" -e "s|@CONF_DIR@|$conf_dir|g" \
    "$here/nginx.conf.in" > "$conf_dir/nginx.conf"

if [ ! -f "$conf_dir/canary-weight.conf" ]; then
    "$here/canary.sh" --conf-dir "$conf_dir" write-weight "${CANARY_WEIGHT:-10}"
fi
echo "rendered $conf_dir/nginx.conf (listen $LISTEN; stable: $STABLE; canary: ${CANARY:-none})"
