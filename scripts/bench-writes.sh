#!/usr/bin/env bash
# Identity writes against the database's ceiling, in one run (issue 17, goal 1):
#   1. pgbench's one-row INSERT ceiling: $PG_CLIENTS clients, each transaction one
#      INSERT into a scratch table of a scratch database, for $PG_DUR;
#   2. CreateServiceAccount against `badge up` on a fresh Postgres database,
#      $N connections x $M in flight for $DUR, a new name per request;
#   2b. CreatePod on the same `badge up` (pods of `default`, through admission);
#   3. service-account-churn on the same `badge up`: Create, Update (a label, with the
#      resource_version) and Delete (resource_version and uid preconditions), a
#      third each, every request one write;
#   4. pod churn on the same `badge up` (badge-bench pod-churn): $POD_WORKERS loops
#      create a pod, issue a token bound to it, review it, delete the pod and
#      review until the token is refused, while $REVIEWERS more reviews of live
#      pods' tokens stay in flight; its identity writes (pod creates + deletes)
#      are set against the ceiling too;
#   5. with SQLITE=1, all four against `badge up` on its embedded SQLite default.
# Prints each rate, p50/p99 and the ratio of the writes to the pgbench ceiling.
# Needs PostgreSQL (and pgbench, psql) on 127.0.0.1:5432. Loopback only; every run
# is bounded in time; the databases, processes and files it made are removed on
# exit. Its ports (BASE_PORT.. BASE_PORT+4) are not `badge up`'s defaults, so it
# can run beside another `badge up` on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-8s}
N=${N:-2}
M=${M:-32}
POD_WORKERS=${POD_WORKERS:-64}
REVIEWERS=${REVIEWERS:-32}
PG_CLIENTS=${PG_CLIENTS:-16}
PG_DUR=${PG_DUR:-8}
SQLITE=${SQLITE:-0}
BASE_PORT=${BASE_PORT:-18443}
PGHOST=127.0.0.1
PGUSER=postgres
DB=${DB:-postgres://$PGUSER@$PGHOST:5432}
T=${CARGO_TARGET_DIR:-$PWD/target}
# Benchmark figures are measured with the dist profile (Cargo.toml).
PROFILE=dist
cargo build --profile "$PROFILE" -q -p badge-cli -p badge-bench --bins
work=$(mktemp -d)
# Copied at once: the target directory may be shared, and another build must not
# swap the binaries under this run.
cp "$T/$PROFILE/badge" "$T/$PROFILE/badge-bench" "$work/"
B=$work/badge-bench
scratch="badge_bench_pgbench_$$"
db="badge_bench_writes_$$"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  for d in "$scratch" "$db"; do
    psql -qh "$PGHOST" -U "$PGUSER" -d postgres -c "DROP DATABASE IF EXISTS \"$d\" WITH (FORCE)" \
      >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

# --- 1. the ceiling: independent one-row INSERTs --------------------------------
psql -qh "$PGHOST" -U "$PGUSER" -d postgres -c "CREATE DATABASE \"$scratch\"" >/dev/null
psql -qh "$PGHOST" -U "$PGUSER" -d "$scratch" -c \
  "CREATE TABLE ceiling (id BIGSERIAL PRIMARY KEY, client INT NOT NULL, n BIGINT NOT NULL, data TEXT NOT NULL)" >/dev/null
cat >"$work/insert.sql" <<'SQL'
\set n random(1, 1000000000)
INSERT INTO ceiling (client, n, data) VALUES (:client_id, :n, 'a service account of about this size');
SQL
echo "== pgbench ceiling: one-row INSERTs, $PG_CLIENTS clients, ${PG_DUR}s"
pg_out=$(timeout $((PG_DUR + 60)) pgbench -h "$PGHOST" -U "$PGUSER" -n -f "$work/insert.sql" \
  -c "$PG_CLIENTS" -j 2 -T "$PG_DUR" -r "$scratch" 2>&1) || { echo "$pg_out"; exit 1; }
ceiling=$(echo "$pg_out" | sed -n 's/^tps = \([0-9.]*\) .*/\1/p' | head -1)
echo "$pg_out" | grep -E "^latency average|^tps"
psql -qh "$PGHOST" -U "$PGUSER" -d postgres -c "DROP DATABASE IF EXISTS \"$scratch\" WITH (FORCE)" >/dev/null

# --- 2. CreateServiceAccount against `badge up` ------------------------------------
# up <name> <database url>: starts `badge up` in $work/<name>, sets $env_file.
up() {
  local dir="$work/$1"
  # Quiet logs: an info line per request would cost more than the write.
  RUST_LOG="warn" timeout 900 "$work/badge" up --data-dir "$dir" --database-url "$2" \
    --identity-listen "127.0.0.1:$BASE_PORT" --issuer-listen "127.0.0.1:$((BASE_PORT + 1))" \
    --oidc-listen "127.0.0.1:$((BASE_PORT + 2))" --review-listen "127.0.0.1:$((BASE_PORT + 3))" \
    --webhook-listen "127.0.0.1:$((BASE_PORT + 4))" >"$work/$1.log" 2>&1 &
  up_pid=$!
  pids+=("$up_pid")
  for _ in $(seq 1 150); do [ -f "$dir/badge.env" ] && break; sleep 0.2; done
  [ -f "$dir/badge.env" ] || { cat "$work/$1.log"; exit 1; }
  sleep 1
  env_file="$dir/badge.env"
}
# writes <scenario> <label>: the run against the `badge up` whose env file is $env_file.
writes() {
  # shellcheck disable=SC1090
  source "$env_file"
  echo "== $1, $2 ($N connections x $M in flight, $DUR)"
  out=$(timeout 300 "$B" run --target "$BADGE_IDENTITY_ENDPOINT" --ca "$BADGE_CA" \
    --cert "$BADGE_CLIENT_CERT" --key "$BADGE_CLIENT_KEY" --connections "$N" --in-flight "$M" \
    --duration "$DUR" "$1" --namespace default)
  echo "$out" | grep -E "rate|latency|errors"
  rate=$(echo "$out" | sed -n 's/^rate.*(ok \([0-9.]*\) req.*/\1/p' | head -1)
}
# pods <label>: badge-bench pod-churn against the `badge up` whose env file is $env_file.
pods() {
  # shellcheck disable=SC1090
  source "$env_file"
  echo "== pod churn, $1 ($POD_WORKERS pod loops + $REVIEWERS reviews in flight, $DUR)"
  out=$(timeout 300 "$B" pod-churn --identity "$BADGE_IDENTITY_ENDPOINT" \
    --issuer "$BADGE_ISSUER_ENDPOINT" --review "$BADGE_REVIEW_ENDPOINT" --ca "$BADGE_CA" \
    --cert "$BADGE_CLIENT_CERT" --key "$BADGE_CLIENT_KEY" --workers "$POD_WORKERS" \
    --reviewers "$REVIEWERS" --duration "$DUR")
  echo "$out"
  rate=$(echo "$out" | sed -n 's/^pods .*, \([0-9.]*\) identity writes.*/\1/p' | head -1)
}
stop() {
  kill "$up_pid" 2>/dev/null || true
  wait "$up_pid" 2>/dev/null || true
  sleep 1
}

share() {
  python3 - "$1" "$2" "$ceiling" <<'PY'
import sys
what, rate, ceiling = sys.argv[1], float(sys.argv[2] or 0), float(sys.argv[3] or 0)
print(f"== {what}/s of the pgbench ceiling: {rate:.0f} / {ceiling:.0f} = {100 * rate / ceiling:.0f} %"
      if ceiling else "== no pgbench ceiling measured")
PY
}

up postgres "$DB/$db"
writes create-service-account "Postgres"
share creates "$rate"
writes create-pod "Postgres"
share "pod creates" "$rate"
writes service-account-churn "Postgres"
share "churn writes" "$rate"
pods "Postgres"
share "pod churn writes" "$rate"
stop

if [ "$SQLITE" = 1 ]; then
  up sqlite "sqlite://$work/sqlite/badge.db"
  writes create-service-account "embedded SQLite"
  writes create-pod "embedded SQLite"
  writes service-account-churn "embedded SQLite"
  pods "embedded SQLite"
  stop
fi
