#!/usr/bin/env bash
# Debian packages the deployment tests use: nginx (the balancer), prometheus (promtool and the server),
# chromium (the UI through nginx). Python validators come from requirements.txt (# Tests).
set -euo pipefail
need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# The Debian nginx package starts a system nginx on port 80; the tests run their own in a temp prefix.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet nginx 2>/dev/null; then
    systemctl stop nginx || true
fi
nginx -v 2>&1 && promtool --version | head -1
# Argo Rollouts and Istio schemas (kubernetes-models, from the npm registry) for the offline CRD check.
command -v npm >/dev/null 2>&1 || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; }
(cd "$(dirname "$0")/../deploy/validate" && npm install --silent --no-audit --no-fund)
# PostgreSQL server binaries for the job store tests (tests/deploy/test_batch_postgres.py)
bash "$(dirname "$0")/install-postgres.sh"
