#!/usr/bin/env bash
# The test command (README "Test it"): on a machine with nothing but Rust it installs
# or starts what the tests need (scripts/test-env.sh: PostgreSQL, grpcurl, PyJWT,
# docker-compose, cargo-nextest, Patroni/etcd/HAProxy), then runs every test of the
# workspace. Extra arguments go to nextest (e.g. `scripts/test.sh -p badge-core`).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/test-env.sh
ensure_test_env
log "tests (cargo nextest run --workspace --all-features)"
exec cargo nextest run --workspace --all-features "$@"
