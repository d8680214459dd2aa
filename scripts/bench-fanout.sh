#!/usr/bin/env bash
# Change-feed fan-out (issue 17, goal 3): database load per change and watch lag
# as the number of watchers grows.
#
# Starts a private PostgreSQL 15 cluster (initdb under a temp dir, a free loopback
# port, trust auth, pg_stat_statements preloaded) so the machine's main cluster is
# untouched, then for each W in $WATCHERS: a fresh database, `badge up` on it, W
# Watch streams on identity (one connection each, `badge-bench watch`), and one
# writer creating service accounts at $RATE/s for $DUR. pg_stat_statements is
# reset once every watcher has its initial list, so the figures are the steady
# state: statement calls per change (all of them, and the feed reads:
# `SELECT … FROM changes WHERE revision > $1`), and the lag from a write's
# acknowledgement to its event at every watcher (p50/p99).
#
# Loopback only; every run is bounded in time; the cluster, processes and files it
# made are removed on exit. BADGE=path uses that `badge` binary instead of this
# tree's dist build (to measure another revision with the same script), and
# BADGE_BENCH=path that `badge-bench`; with both nothing is built. (A target
# directory shared by several worktrees holds one `dist/badge` for all of them,
# whichever built last: copy the binaries right after building them.)
set -euo pipefail
cd "$(dirname "$0")/.."
WATCHERS=${WATCHERS:-"1 10 50"}
RATE=${RATE:-100}
DUR=${DUR:-10s}
DRAIN=${DRAIN:-20s}
BASE_PORT=${BASE_PORT:-18643}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
T=${CARGO_TARGET_DIR:-$PWD/target}
PROFILE=dist
work=$(mktemp -d)
if [ -z "${BADGE:-}" ] || [ -z "${BADGE_BENCH:-}" ]; then
  cargo build --profile "$PROFILE" -q -p badge-cli -p badge-bench --bins
  # Copied at once: the target directory may be shared, and another build must
  # not swap the binaries under this run.
  cp "$T/$PROFILE/badge" "$T/$PROFILE/badge-bench" "$work/"
fi
[ -n "${BADGE:-}" ] && cp "$BADGE" "$work/badge"
[ -n "${BADGE_BENCH:-}" ] && cp "$BADGE_BENCH" "$work/badge-bench"
B=$work/badge-bench
pids=()
pg_started=0
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ "$pg_started" = 1 ]; then
    as_pg "$PGBIN/pg_ctl" -D "$work/pg" -m immediate stop >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# --- the private cluster --------------------------------------------------------------
if [ ! -f "$PGBIN/../lib/pg_stat_statements.so" ] \
  && [ ! -f "/usr/lib/postgresql/15/lib/pg_stat_statements.so" ]; then
  echo "== installing postgresql-contrib (pg_stat_statements)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-contrib >/dev/null
fi
PGPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
[ "$(id -u)" = 0 ] && chown postgres "$work"
as_pg "$PGBIN/initdb" -D "$work/pg" -A trust -U postgres --no-sync >/dev/null
cat >>"$work/pg/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$work/pg'
max_connections = 300
shared_preload_libraries = 'pg_stat_statements'
pg_stat_statements.track = all
pg_stat_statements.max = 5000
CONF
as_pg "$PGBIN/pg_ctl" -D "$work/pg" -l "$work/pg/log" -w -t 60 start >/dev/null
pg_started=1
PSQL=(psql -qAtX -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres)
"${PSQL[@]}" -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" >/dev/null
echo "== private PostgreSQL on 127.0.0.1:$PGPORT ($("${PSQL[@]}" -c 'SHOW server_version'))"

# up <name>: `badge up` on a fresh database <name> of the private cluster.
up() {
  local dir="$work/$1"
  RUST_LOG="warn" timeout 900 "$work/badge" up --data-dir "$dir" \
    --database-url "postgres://postgres@127.0.0.1:$PGPORT/$1" \
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
# CPU time (clock ticks, user + system) of the `badge` process under `timeout`.
cpu_ticks() {
  local child
  child=$(pgrep -P "$up_pid" | head -1)
  awk '{print $14 + $15}' "/proc/$child/stat"
}
stop() {
  kill "$up_pid" 2>/dev/null || true
  wait "$up_pid" 2>/dev/null || true
  sleep 1
}

rows=()
for W in $WATCHERS; do
  db="fanout_w$W"
  up "$db"
  # shellcheck disable=SC1090
  source "$env_file"
  rm -f "$work/ready" "$work/go"
  timeout 400 "$B" watch --target "$BADGE_IDENTITY_ENDPOINT" --ca "$BADGE_CA" \
    --cert "$BADGE_CLIENT_CERT" --key "$BADGE_CLIENT_KEY" --watchers "$W" --rate "$RATE" \
    --duration "$DUR" --drain "$DRAIN" --ready-file "$work/ready" --go-file "$work/go" \
    --json >"$work/w$W.json" &
  bench=$!
  pids+=("$bench")
  for _ in $(seq 1 600); do [ -f "$work/ready" ] && break; sleep 0.1; done
  [ -f "$work/ready" ] || { echo "watchers not ready"; cat "$work/$db.log"; exit 1; }
  # A moment for the watchers' first feed reads to finish, then count from zero.
  sleep 1
  "${PSQL[@]}" -c "SELECT pg_stat_statements_reset()" >/dev/null
  cpu0=$(cpu_ticks)
  touch "$work/go"
  wait "$bench" || { echo "badge-bench watch failed (W=$W)"; tail -20 "$work/$db.log"; exit 1; }
  cpu=$(( $(cpu_ticks) - cpu0 ))
  stats=$("${PSQL[@]}" -F ' ' -c "
    SELECT coalesce(sum(calls), 0),
           coalesce(sum(calls) FILTER (WHERE query LIKE '%FROM changes WHERE revision >%'), 0),
           coalesce(sum(calls) FILTER (WHERE query LIKE '%compacted_revision%'
                                       AND query NOT LIKE '%UPDATE%'), 0),
           coalesce(round(sum(total_exec_time)::numeric, 1), 0)
    FROM pg_stat_statements
    WHERE dbid = (SELECT oid FROM pg_database WHERE datname = '$db')")
  stop
  rows+=("$W $stats $cpu $(cat "$work/w$W.json")")
done

python3 - "${rows[@]}" <<'PY'
import json, os, sys
hz = os.sysconf("SC_CLK_TCK")
print()
print(f"{'W':>4} {'changes':>8} {'calls':>8} {'calls/chg':>9} {'feed/chg':>9} "
      f"{'exec ms/chg':>11} {'badge cpu ms/chg':>16} {'lag p50':>8} {'lag p99':>8} {'max':>8} {'missing':>7} {'failed':>6}")
for row in sys.argv[1:]:
    w, calls, feed, meta, exec_ms, cpu, js = row.split(" ", 6)
    r = json.loads(js)
    n = max(r["written"], 1)
    print(f"{w:>4} {r['written']:>8} {int(calls):>8} {int(calls)/n:>9.2f} {int(feed)/n:>9.2f} "
          f"{float(exec_ms)/n:>11.3f} {1000*int(cpu)/hz/n:>16.3f} {r['lag_all_p50_us']/1000:>6.1f}ms {r['lag_all_p99_us']/1000:>6.1f}ms "
          f"{r['lag_all_max_us']/1000:>6.0f}ms {r['missing']:>7} {r['streams_failed']:>6}")
print("lag: a write's acknowledgement → its event at the last of the W watchers;"
      " calls: every statement of the database in the window (pg_stat_statements);"
      " badge cpu: user+system time of the `badge up` process in the window")
PY
