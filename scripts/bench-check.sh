#!/usr/bin/env bash
# Envoy's ext_authz Check (token-review) against the echo ceiling, in one run
# (REPEAT alternating echo/Check pairs per variant, default 3, median ratio):
#   1. the echo-server process with a CheckRequest-sized payload (the bearer-token
#      request, the larger of the two) and with the peer request's size;
#   2. Check with a pod-bound ES256 bearer token (warm) and with the mesh peer's
#      SPIFFE ID (no token), each allowed by a ClusterRole with nonResourceURLs.
# Needs PostgreSQL on 127.0.0.1:5432. Loopback only; every run is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-8s}
N=${N:-2}
REPEAT=${REPEAT:-3}
M=${M:-64}
DB=${DB:-postgres://postgres@127.0.0.1:5432}
ECHO_PORT=${ECHO_PORT:-9556}
cargo build --profile dist -q -p badge-cli -p badge-bench --bins
T=${CARGO_TARGET_DIR:-$PWD/target}
R=$T/dist
B=$R/badge-bench
work=$(mktemp -d)
db="$DB/badge_bench_check_$$"
cleanup() {
  pkill -f "badge up --data-dir $work" || true
  pkill -f "echo-server --listen 127.0.0.1:$ECHO_PORT" || true
  sleep 1
  psql -qh 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS \"${db##*/}\" WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# Audit events of allowed checks are aggregated anyway; keep the log quiet.
RUST_LOG="info,audit=warn" timeout 600 "$R/badge" up --data-dir "$work/up" --database-url "$db" \
  --algorithm ES256 >"$work/up.log" 2>&1 &
for _ in $(seq 1 150); do [ -f "$work/up/badge.env" ] && break; sleep 0.2; done
[ -f "$work/up/badge.env" ] || { cat "$work/up.log"; exit 1; }
sleep 1
# shellcheck disable=SC1091
source "$work/up/badge.env"
G=(grpcurl -max-time 10 -cacert "$BADGE_CA" -cert "$BADGE_CLIENT_CERT" -key "$BADGE_CLIENT_KEY")
ID=${BADGE_IDENTITY_ENDPOINT#https://}
ISSUER=${BADGE_ISSUER_ENDPOINT#https://}
"$R/badge" issue-client --dir "$work/up/pki" --stem envoy-gateway --user envoy-gateway >/dev/null
GW=(--ca "$BADGE_CA" --cert "$work/up/pki/envoy-gateway.pem" --key "$work/up/pki/envoy-gateway-key.pem")
call() { "${G[@]}" -d "$2" "$1" "$3" >/dev/null; }
call "$ID" '{"cluster_role_binding":{"metadata":{"name":"envoy-gateway-ext-authz"},
  "role_ref":{"kind":"ClusterRole","name":"system:badge:ext-authz"},
  "subjects":[{"kind":"User","name":"envoy-gateway"}]}}' badge.rbac.v1.ClusterRoleBindingService/CreateClusterRoleBinding
call "$ID" '{"namespace":{"metadata":{"name":"shop"}}}' badge.identity.v1.NamespaceService/CreateNamespace
call "$ID" '{"service_account":{"metadata":{"name":"web","namespace":"shop"}}}' \
  badge.identity.v1.ServiceAccountService/CreateServiceAccount
call "$ID" '{"node":{"metadata":{"name":"worker-1"}}}' badge.identity.v1.NodeService/CreateNode
uid=$("${G[@]}" -d '{"pod":{"metadata":{"name":"web-1","namespace":"shop"},
  "spec":{"service_account_name":"web","node_name":"worker-1"}}}' "$ID" badge.identity.v1.PodService/CreatePod \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["metadata"]["uid"])')
call "$ID" '{"cluster_role":{"metadata":{"name":"shop-api"},
  "rules":[{"verbs":["get"],"non_resource_urls":["/shop/orders"]}]}}' badge.rbac.v1.ClusterRoleService/CreateClusterRole
call "$ID" '{"cluster_role_binding":{"metadata":{"name":"shop-api"},"role_ref":{"kind":"ClusterRole","name":"shop-api"},
  "subjects":[{"kind":"ServiceAccount","name":"web","namespace":"shop"}]}}' badge.rbac.v1.ClusterRoleBindingService/CreateClusterRoleBinding
"${G[@]}" -d '{"namespace":"shop","name":"web","audiences":["shop"],
  "bound_object_ref":{"kind":"Pod","api_version":"v1","name":"web-1","uid":"'"$uid"'"}}' \
  "$ISSUER" badge.token.v1.TokenService/CreateToken \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])' >"$work/token"
trust_domain=$(python3 -c 'import sys,urllib.parse; print(urllib.parse.urlparse(sys.argv[1]).hostname)' "$BADGE_ISSUER_URL")
principal="spiffe://$trust_domain/ns/shop/sa/web"
sleep 1

"$B" echo-server --listen "127.0.0.1:$ECHO_PORT" --ca "$BADGE_CA" \
  --cert "$work/up/pki/identity.pem" --key "$work/up/pki/identity-key.pem" >"$work/echo.log" 2>&1 &
sleep 1
# check [--size] <scenario flags>: a Check run (--size: the request's encoded size only).
check() {
  local pre=()
  if [ "$1" = --size ]; then pre=(--print-request-size); shift; fi
  "$B" run --target "$BADGE_REVIEW_ENDPOINT" "${GW[@]}" --connections "$N" --in-flight "$M" \
    --duration "$DUR" "${pre[@]}" check --path /shop/orders --audience shop --expect-allowed "$@"
}
echo_run() {
  "$B" run --target "https://127.0.0.1:$ECHO_PORT" "${GW[@]}" --connections "$N" --in-flight "$M" \
    --duration "$DUR" echo --payload-bytes "$1"
}
# pair <label> <size> <check flags>: REPEAT alternating runs of the same-size echo and
# of Check (this VM's rates drift by tens of percent from minute to minute, so one
# echo run followed by one Check run can differ by the drift alone); each run's
# rates and p99s, the ratio, and the median ratio.
pair() {
  local label=$1 size=$2
  shift 2
  echo "== $label ($size B CheckRequest; echo at the same size; $N connections x $M in flight, $DUR, $REPEAT pairs)"
  local ratios=() e c
  for i in $(seq 1 "$REPEAT"); do
    e=$(echo_run "$size")
    c=$(check "$@")
    awk '/^errors/ && $2 != 0 {bad=1} END{exit !bad}' <<<"$c" && echo "$c"
    read -r er ep <<<"$(awk '/^rate/{r=$2} /^latency/{p=$6} END{print r, p}' <<<"$e")"
    read -r cr cp <<<"$(awk '/^rate/{r=$2} /^latency/{p=$6} END{print r, p}' <<<"$c")"
    ratio=$(python3 -c 'import sys; print(f"{100*float(sys.argv[1])/float(sys.argv[2]):.1f}")' "$cr" "$er")
    ratios+=("$ratio")
    echo "   pair $i: echo $er/s p99 ${ep} ms | Check $cr/s p99 ${cp} ms | Check = $ratio % of echo"
  done
  echo "   median: $(printf '%s\n' "${ratios[@]}" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}') % of echo"
}
bearer_size=$(check --size --token-file "$work/token")
peer_size=$(check --size --principal "$principal")
pair "Check, pod-bound ES256 bearer token, warm" "$bearer_size" --token-file "$work/token"
pair "Check, mesh peer $principal, no token" "$peer_size" --principal "$principal"
