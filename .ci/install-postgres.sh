#!/usr/bin/env bash
# Debian's PostgreSQL server binaries for the job tests (tests/deploy/test_batch_postgres.py starts its own
# throwaway cluster in a temp dir on a loopback port; the packaged system cluster is not used).
set -euo pipefail
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi
# The package may start a system cluster on 5432; the tests do not need it.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet postgresql 2>/dev/null; then
    systemctl stop postgresql || true
fi
ls -d /usr/lib/postgresql/*/bin | tail -1
