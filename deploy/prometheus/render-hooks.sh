#!/usr/bin/env bash
# Write the webhook (Debian `webhook`, adnanh/webhook) hooks file that rolls the canary back when
# Alertmanager fires a canary alert, with the paths of THIS checkout: it works wherever the project lives.
#   deploy/prometheus/render-hooks.sh [OUT]        # default .run/webhook/hooks.json
#   webhook -hooks .run/webhook/hooks.json -ip 127.0.0.1 -port 9099 -verbose
# Settings (environment): NGINX_CONF_DIR, the nginx config dir canary.sh drives (default .run/nginx, what
# deploy/local/up.sh --nginx renders); HOOK_ID (cosyvoice-canary-rollback; alertmanager.yml's URL ends with it).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$root/.run/webhook/hooks.json}
conf_dir=${NGINX_CONF_DIR:-$root/.run/nginx}
case "$conf_dir" in /*) ;; *) conf_dir=$PWD/$conf_dir ;; esac
hook_id=${HOOK_ID:-cosyvoice-canary-rollback}

json_string() {   # a JSON string literal for $1
    local s=${1//\\/\\\\}
    s=${s//\"/\\\"}
    printf '"%s"' "$s"
}

mkdir -p "$(dirname "$out")"
tmp=$(mktemp "$out.XXXXXX")
cat > "$tmp" <<JSON
[
  {
    "id": $(json_string "$hook_id"),
    "execute-command": $(json_string "$root/deploy/nginx/canary.sh"),
    "command-working-directory": $(json_string "$root"),
    "pass-arguments-to-command": [
      {"source": "string", "name": "--conf-dir"},
      {"source": "string", "name": $(json_string "$conf_dir")},
      {"source": "string", "name": "rollback"}
    ],
    "include-command-output-in-response": true,
    "trigger-rule": {
      "match": {"type": "value", "value": "firing", "parameter": {"source": "payload", "name": "status"}}
    }
  }
]
JSON
mv "$tmp" "$out"
echo "wrote $out (canary.sh in $root, nginx config $conf_dir)"
