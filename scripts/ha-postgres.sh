#!/usr/bin/env bash
# A real highly-available PostgreSQL on loopback: three Postgres 15 instances managed
# by Patroni, with one etcd as Patroni's configuration store, synchronous
# replication (an acknowledged commit is on two nodes). For Badge's failover tests
# and for trying Badge on HA Postgres by hand. Debian packages: postgresql, patroni,
# etcd-server (installed when missing).
#
#   scripts/ha-postgres.sh up          start (bounded: fails after 120 s), print the URL
#   scripts/ha-postgres.sh status      patronictl list
#   scripts/ha-postgres.sh url         the multi-host database URL for Badge
#   scripts/ha-postgres.sh primary     the primary's port
#   scripts/ha-postgres.sh failover    the primary's node crashes: kill -9 its Patroni and postmaster
#                                      (Patroni promotes the synchronous replica after ttl = 10 s)
#   scripts/ha-postgres.sh rejoin      restart the crashed node; it rejoins as a replica
#   scripts/ha-postgres.sh crash-postgres  kill -9 only the primary's postmaster (restarted in place)
#   scripts/ha-postgres.sh freeze      SIGSTOP the primary's postmaster and backends (a "partition")
#   scripts/ha-postgres.sh thaw        SIGCONT what `freeze` stopped
#   scripts/ha-postgres.sh switchover  planned switchover to a synchronous replica
#   scripts/ha-postgres.sh down        stop everything by PID and remove the data directories
#
# Loopback only: etcd on 127.0.0.1:2479 (peer 2480), Postgres on 127.0.0.1:5441-5443,
# Patroni's REST API on 127.0.0.1:8041-8043, HAProxy (when installed) on 127.0.0.1:5440
# always leading to the primary. Everything lives under $BADGE_HA_DIR
# (default /tmp/badge-ha). Postgres refuses to run as root, so the nodes run as the
# `postgres` user when the script runs as root.
set -euo pipefail

DIR="${BADGE_HA_DIR:-/tmp/badge-ha}"
SCOPE=badge
NODES=(1 2 3)
ETCD_PORT=2479
ETCD_PEER=2480
HAPROXY_PORT=5440
PG_BIN="${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}"
UP_TIMEOUT="${BADGE_HA_UP_TIMEOUT:-120}"

pg_port() { echo $((5440 + $1)); }
api_port() { echo $((8040 + $1)); }

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

ensure_packages() {
  local missing=()
  command -v patroni >/dev/null || missing+=(patroni)
  command -v etcd >/dev/null || missing+=(etcd-server)
  [ -n "$PG_BIN" ] && [ -x "$PG_BIN/postgres" ] || missing+=(postgresql)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} (Debian)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
    PG_BIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
  fi
}

node_config() {
  local n=$1 port api
  port=$(pg_port "$n"); api=$(api_port "$n")
  cat <<EOF
scope: $SCOPE
name: pg$n
log:
  level: WARNING
restapi:
  listen: 127.0.0.1:$api
  connect_address: 127.0.0.1:$api
etcd3:
  hosts: 127.0.0.1:$ETCD_PORT
bootstrap:
  dcs:
    # Fast failover for tests and small clusters: a leader that stops renewing its
    # key for ttl seconds is replaced.
    ttl: 10
    loop_wait: 1
    retry_timeout: 5
    maximum_lag_on_failover: 1048576
    # An acknowledged commit is on the primary and one synchronous replica; a
    # failover only promotes a synchronous replica, so no acknowledged write is lost.
    synchronous_mode: true
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_level: replica
        hot_standby: "on"
        max_wal_senders: 10
        max_replication_slots: 10
        wal_log_hints: "on"
        max_connections: 200
        synchronous_commit: "on"
  initdb:
  - encoding: UTF8
  - data-checksums
  pg_hba:
  - local all all trust
  - host all all 127.0.0.1/32 trust
  - host replication replicator 127.0.0.1/32 trust
postgresql:
  listen: 127.0.0.1:$port
  connect_address: 127.0.0.1:$port
  data_dir: $DIR/pg$n/data
  bin_dir: $PG_BIN
  pgpass: $DIR/pg$n/pgpass
  authentication:
    superuser:
      username: postgres
    replication:
      username: replicator
  parameters:
    unix_socket_directories: $DIR/pg$n
tags:
  nofailover: false
  noloadbalance: false
  clonefrom: false
EOF
}

start_etcd() {
  mkdir -p "$DIR/etcd"
  etcd --name badge-ha --data-dir "$DIR/etcd/data" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
    --initial-cluster "badge-ha=http://127.0.0.1:$ETCD_PEER" \
    --initial-cluster-state new --enable-v2=true \
    >"$DIR/etcd/etcd.log" 2>&1 &
  echo $! >"$DIR/etcd/pid"
  for _ in $(seq 1 50); do
    curl -fsS "http://127.0.0.1:$ETCD_PORT/health" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "etcd did not come up (see $DIR/etcd/etcd.log)" >&2
  return 1
}

# HAProxy on 127.0.0.1:5440 in front of the primary: Patroni's REST API answers
# GET /primary with 200 only on the leader, so HAProxy sends every connection to
# whichever node is primary now and cuts connections to a demoted one. The
# alternative to a multi-host URL for clients that cannot follow a primary.
start_haproxy() {
  mkdir -p "$DIR/haproxy"
  {
    cat <<EOF
global
  maxconn 1000
defaults
  mode tcp
  timeout connect 2s
  timeout client 30m
  timeout server 30m
  timeout check 1s
listen primary
  bind 127.0.0.1:$HAPROXY_PORT
  option httpchk GET /primary
  http-check expect status 200
  default-server inter 500ms fall 2 rise 1 on-marked-down shutdown-sessions
EOF
    for n in "${NODES[@]}"; do
      echo "  server pg$n 127.0.0.1:$(pg_port "$n") check port $(api_port "$n")"
    done
  } >"$DIR/haproxy/haproxy.cfg"
  haproxy -f "$DIR/haproxy/haproxy.cfg" -D -p "$DIR/haproxy/pid" >"$DIR/haproxy/haproxy.log" 2>&1
}

start_node() {
  local n=$1
  mkdir -p "$DIR/pg$n"
  node_config "$n" >"$DIR/pg$n/patroni.yml"
  if [ "$(id -u)" = 0 ]; then chown -R postgres:postgres "$DIR/pg$n"; fi
  chmod 700 "$DIR/pg$n"
  as_pg patroni "$DIR/pg$n/patroni.yml" >"$DIR/pg$n/patroni.log" 2>&1 &
  echo $! >"$DIR/pg$n/patroni.pid"
}

# Prints "<member> <role> <state> <port>" per node from Patroni's REST API.
members() {
  curl -fsS "http://127.0.0.1:$(api_port 1)/cluster" 2>/dev/null \
    || curl -fsS "http://127.0.0.1:$(api_port 2)/cluster" 2>/dev/null \
    || curl -fsS "http://127.0.0.1:$(api_port 3)/cluster" 2>/dev/null
}

cluster_ready() {
  members | python3 -c '
import json, sys
m = json.load(sys.stdin)["members"]
leader = [x for x in m if x["role"] == "leader" and x["state"] == "running"]
sync = [x for x in m if x["role"] == "sync_standby" and x["state"] in ("running", "streaming")]
others = [x for x in m if x["role"] in ("replica", "sync_standby") and x["state"] in ("running", "streaming")]
sys.exit(0 if len(leader) == 1 and len(sync) >= 1 and len(others) == 2 else 1)
' 2>/dev/null
}

primary_port() {
  members | python3 -c '
import json, sys
m = json.load(sys.stdin)["members"]
print(next(x["port"] for x in m if x["role"] == "leader"))
'
}

url() {
  local hosts=()
  for n in "${NODES[@]}"; do hosts+=("127.0.0.1:$(pg_port "$n")"); done
  local joined; joined=$(IFS=,; echo "${hosts[*]}")
  echo "postgres://postgres@$joined/badge?target_session_attrs=read-write"
}

up() {
  ensure_packages
  if [ -e "$DIR" ]; then down >/dev/null 2>&1 || true; fi
  mkdir -p "$DIR"
  chmod 755 "$DIR"
  start_etcd
  for n in "${NODES[@]}"; do start_node "$n"; done
  if command -v haproxy >/dev/null; then start_haproxy; fi
  local deadline=$(( $(date +%s) + UP_TIMEOUT ))
  until cluster_ready; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "the cluster did not become ready in ${UP_TIMEOUT}s:" >&2
      members >&2 || true
      tail -n 20 "$DIR"/pg*/patroni.log >&2 || true
      return 1
    fi
    sleep 0.5
  done
  # Badge's database (the store creates it too; here for psql users).
  "$PG_BIN/psql" -h 127.0.0.1 -p "$(primary_port)" -U postgres -qAtc \
    "SELECT 1 FROM pg_database WHERE datname = 'badge'" | grep -q 1 \
    || "$PG_BIN/createdb" -h 127.0.0.1 -p "$(primary_port)" -U postgres badge
  status
  echo "BADGE_DATABASE__URL=$(url)"
  if [ -f "$DIR/haproxy/pid" ]; then
    echo "through HAProxy: postgres://postgres@127.0.0.1:$HAPROXY_PORT/badge"
  fi
}

status() {
  members | python3 -c '
import json, sys
for x in json.load(sys.stdin)["members"]:
    print("%-4s %-13s %-10s port %s lag %s timeline %s" % (x["name"], x["role"], x["state"], x["port"], x.get("lag", 0), x.get("timeline", "-")))
'
}

# The Patroni process of node $1 (not the runuser wrapper that started it).
patroni_pid() {
  local user=postgres
  [ "$(id -u)" = 0 ] || user=$(id -un)
  pgrep -u "$user" -f "patroni $DIR/pg$1/patroni.yml" | head -n 1
}

postmaster_pid() {
  local port=$1 n=$(( $1 - 5440 ))
  head -n 1 "$DIR/pg$n/data/postmaster.pid"
}

# The primary's node crashes: its Patroni and its postmaster are killed with
# SIGKILL. (Killing only the postmaster makes Patroni restart it in place, still
# the leader: no failover.) The leader key expires after `ttl` and Patroni promotes
# the synchronous replica; `rejoin` brings the old node back as a replica.
failover() {
  local port; port=$(primary_port)
  local n=$(( port - 5440 ))
  local pid; pid=$(postmaster_pid "$port")
  local patroni; patroni=$(patroni_pid "$n")
  echo "kill -9 patroni $patroni and postmaster $pid (primary pg$n on port $port)"
  kill -9 "$patroni" "$pid"
  echo "$n" >"$DIR/crashed"
}

# Restarts the Patroni of the node `failover` crashed; it rejoins as a replica
# (pg_rewind when its timeline diverged).
rejoin() {
  [ -f "$DIR/crashed" ] || return 0
  local n; n=$(cat "$DIR/crashed")
  rm -f "$DIR/crashed"
  as_pg patroni "$DIR/pg$n/patroni.yml" >>"$DIR/pg$n/patroni.log" 2>&1 &
  echo $! >"$DIR/pg$n/patroni.pid"
}

# Kills only the primary's postmaster (Patroni restarts it in place).
crash_postgres() {
  local port; port=$(primary_port)
  local pid; pid=$(postmaster_pid "$port")
  echo "kill -9 postmaster $pid (primary on port $port)"
  kill -9 "$pid"
}

freeze() {
  local port; port=$(primary_port)
  local pid; pid=$(postmaster_pid "$port")
  # The postmaster and its backends (what a client talks to) stop; Patroni keeps
  # running but sees a Postgres that answers nothing, and demotes it.
  local pids; pids="$pid $(pgrep -P "$pid" | tr '\n' ' ')"
  echo "$pids" >"$DIR/frozen"
  echo "SIGSTOP $pids (primary on port $port)"
  # shellcheck disable=SC2086
  kill -STOP $pids
}

thaw() {
  [ -f "$DIR/frozen" ] || return 0
  # shellcheck disable=SC2046
  kill -CONT $(cat "$DIR/frozen") 2>/dev/null || true
  rm -f "$DIR/frozen"
}

switchover() {
  local leader
  leader=$(members | python3 -c '
import json, sys
print(next(x["name"] for x in json.load(sys.stdin)["members"] if x["role"] == "leader"))
')
  patronictl -c "$DIR/pg1/patroni.yml" switchover "$SCOPE" --leader "$leader" --force
}

down() {
  thaw
  for n in "${NODES[@]}"; do
    local p; p=$(patroni_pid "$n" || true)
    [ -n "$p" ] && kill "$p" 2>/dev/null || true
  done
  # Patroni stops its Postgres on SIGTERM; wait, then make sure.
  for _ in $(seq 1 50); do
    pgrep -f "patroni $DIR/" >/dev/null || break
    sleep 0.2
  done
  pkill -9 -f "patroni $DIR/" 2>/dev/null || true
  for n in "${NODES[@]}"; do
    local pidfile="$DIR/pg$n/data/postmaster.pid"
    if [ -f "$pidfile" ]; then kill -9 "$(head -n 1 "$pidfile")" 2>/dev/null || true; fi
  done
  [ -f "$DIR/haproxy/pid" ] && kill "$(cat "$DIR/haproxy/pid")" 2>/dev/null || true
  [ -f "$DIR/etcd/pid" ] && kill "$(cat "$DIR/etcd/pid")" 2>/dev/null || true
  sleep 0.5
  rm -rf "$DIR"
}

# Every process started here (etcd, Patroni as postgres, HAProxy) inherits the
# working directory. The nodes run as postgres: started from a directory that user
# cannot enter (e.g. a checkout under a 0700 mktemp dir), Patroni never gets its
# first node past initdb and the cluster never becomes ready. So work from /, with
# DIR made absolute first.
case "$DIR" in /*) ;; *) DIR="$PWD/$DIR" ;; esac
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd /

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  url) url ;;
  primary) primary_port ;;
  failover) failover ;;
  rejoin) rejoin ;;
  crash-postgres) crash_postgres ;;
  freeze) freeze ;;
  thaw) thaw ;;
  switchover) switchover ;;
  *) sed -n '2,24p' "$SELF" >&2; exit 2 ;;
esac
