#!/usr/bin/env bash
# Identity reads against the echo ceiling, in one run (issue 17, goal 2):
#   1. GetServiceAccount against `badge up` on a fresh Postgres database and the
#      echo-server process with the same request size, REPEAT alternating pairs
#      (this VM's rates drift by tens of percent between runs: the median ratio);
#   2. ListServiceAccounts of a namespace holding 1,000 service accounts
#      (page_size 1000: one page), against the same echo ceiling.
# ONLY="get" or ONLY="list" runs one of the two.
# Get and List are answered from identity's change-feed-fed index with consistent
# reads (docs/store-reads.md); FROM_STORE=1 starts `badge up
# --identity-reads-from-store` (every read from the database: the figure before).
# Needs PostgreSQL (psql) on 127.0.0.1:5432. Loopback only; every run is bounded in
# time; what it made is removed on exit. Ports BASE_PORT..BASE_PORT+5 are not
# `badge up`'s defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-8s}
N=${N:-2}
M=${M:-64}
REPEAT=${REPEAT:-3}
OBJECTS=${OBJECTS:-1000}
BASE_PORT=${BASE_PORT:-18543}
PGHOST=127.0.0.1
PGUSER=postgres
DB=${DB:-postgres://$PGUSER@$PGHOST:5432}
T=${CARGO_TARGET_DIR:-$PWD/target}
# Benchmark figures are measured with the dist profile (Cargo.toml).
PROFILE=dist
[ "${BUILT:-0}" = 1 ] || cargo build --profile "$PROFILE" -q -p badge-cli -p badge-bench --bins
work=$(mktemp -d)
# Copied at once: the target directory may be shared.
cp "$T/$PROFILE/badge" "$T/$PROFILE/badge-bench" "$work/"
B=$work/badge-bench
db="badge_bench_reads_$$"
ECHO_PORT=$((BASE_PORT + 5))
pids=()
from_store=()
[ "${FROM_STORE:-0}" = 1 ] && from_store=(--identity-reads-from-store)
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  psql -qh "$PGHOST" -U "$PGUSER" -d postgres -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" \
    >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

RUST_LOG="warn" timeout 900 "$work/badge" up --data-dir "$work/up" --database-url "$DB/$db" \
  --identity-listen "127.0.0.1:$BASE_PORT" --issuer-listen "127.0.0.1:$((BASE_PORT + 1))" \
  --oidc-listen "127.0.0.1:$((BASE_PORT + 2))" --review-listen "127.0.0.1:$((BASE_PORT + 3))" \
  --webhook-listen "127.0.0.1:$((BASE_PORT + 4))" "${from_store[@]}" >"$work/up.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 150); do [ -f "$work/up/badge.env" ] && break; sleep 0.2; done
[ -f "$work/up/badge.env" ] || { cat "$work/up.log"; exit 1; }
sleep 1
# shellcheck disable=SC1091
source "$work/up/badge.env"
TLS=(--ca "$BADGE_CA" --cert "$BADGE_CLIENT_CERT" --key "$BADGE_CLIENT_KEY")
grpcurl -max-time 10 -cacert "$BADGE_CA" -cert "$BADGE_CLIENT_CERT" -key "$BADGE_CLIENT_KEY" \
  -d '{"namespace":{"metadata":{"name":"reads"}}}' "${BADGE_IDENTITY_ENDPOINT#https://}" \
  badge.identity.v1.NamespaceService/CreateNamespace >/dev/null
# OBJECTS - 1 more, beside the namespace's `default`.
"$B" burst --target "$BADGE_IDENTITY_ENDPOINT" "${TLS[@]}" --requests $((OBJECTS - 1)) \
  --connections 4 --deadline 120s create-service-account --namespace reads --name-prefix sa- >/dev/null

"$B" echo-server --listen "127.0.0.1:$ECHO_PORT" --ca "$BADGE_CA" \
  --cert "$work/up/pki/identity.pem" --key "$work/up/pki/identity-key.pem" >"$work/echo.log" 2>&1 &
pids+=($!)
sleep 1
run() {
  timeout 120 "$B" run --target "$1" "${TLS[@]}" --connections "$N" --in-flight "$M" --duration "$DUR" "${@:2}"
}
# pair <label> <scenario...>: REPEAT alternating echo/scenario runs, each run's rates
# and p99s, and the median ratio.
pair() {
  local label=$1
  shift
  local size
  size=$("$B" run --target "$BADGE_IDENTITY_ENDPOINT" "${TLS[@]}" --print-request-size "$@")
  echo "== $label ($size B request; echo at the same size; $N connections x $M in flight, $DUR, $REPEAT pairs)"
  local ratios=() e c er ep cr cp
  for i in $(seq 1 "$REPEAT"); do
    e=$(run "https://127.0.0.1:$ECHO_PORT" echo --payload-bytes "$size")
    c=$(run "$BADGE_IDENTITY_ENDPOINT" "$@")
    awk '/^errors/ && $2 != 0 {bad=1} END{exit !bad}' <<<"$c" && echo "$c"
    read -r er ep <<<"$(awk '/^rate/{r=$2} /^latency/{p=$6} END{print r, p}' <<<"$e")"
    read -r cr cp <<<"$(awk '/^rate/{r=$2} /^latency/{p=$6} END{print r, p}' <<<"$c")"
    ratio=$(python3 -c 'import sys; print(f"{100*float(sys.argv[1])/float(sys.argv[2]):.2f}")' "$cr" "$er")
    ratios+=("$ratio")
    echo "   pair $i: echo $er/s p99 ${ep} ms | $1 $cr/s p99 ${cp} ms | = $ratio % of echo"
  done
  echo "   median: $(printf '%s\n' "${ratios[@]}" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}') % of echo"
}
case " ${ONLY:-get list} " in *" get "*)
  pair "GetServiceAccount" get-service-account --namespace reads --name sa-7 ;;
esac
case " ${ONLY:-get list} " in *" list "*)
  pair "ListServiceAccounts, $OBJECTS objects in one page" list-service-accounts --namespace reads \
    --page-size 1000 --expect-items "$OBJECTS" ;;
esac
