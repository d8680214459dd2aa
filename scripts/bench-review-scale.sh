#!/usr/bin/env bash
# CreateTokenReview on a small data set and on 1 M service accounts + 1 M pods
# (filled by the index_scale example), each beside the echo ceiling, plus the
# review rate with the signature cache off (every review verifies the signature).
# Needs PostgreSQL on 127.0.0.1:5432 and grpcurl; loopback only; bounded runs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
R=${BIN:-$root/target/dist}
DUR=${DUR:-10s}
PG=postgres://postgres@127.0.0.1:5432
N=${N:-1000000}
# shellcheck source=scripts/uncached-review.sh
source "$root/scripts/uncached-review.sh"
"$R/examples/index_scale" "$N" "$PG/badge_scale" | grep -E "index|lookups"
work=$(mktemp -d)
trap 'pkill -f "badge up --data-dir $work" || true; pkill -f "token-review serve --config $work" || true; rm -rf "$work"' EXIT
run() { # name database namespace sa pod
  local name=$1 db=$2 ns=$3 sa=$4 pod=$5 dir=$work/$1
  RUST_LOG="warn" "$R/badge" up --data-dir "$dir" --database-url "$db" >"$dir.log" 2>&1 &
  for _ in $(seq 1 300); do [ -f "$dir/badge.env" ] && break; sleep 0.2; done
  for _ in $(seq 1 300); do
    "$R/badge" health --endpoint https://127.0.0.1:8446 --ca "$dir/pki/ca.pem" \
      --cert "$dir/pki/admin.pem" --key "$dir/pki/admin-key.pem" >/dev/null 2>&1 && break
    sleep 0.2
  done
  local G="grpcurl -cacert $dir/pki/ca.pem -cert $dir/pki/admin.pem -key $dir/pki/admin-key.pem"
  if [ "$name" = small ]; then
    $G -d '{"namespace":{"metadata":{"name":"'"$ns"'"}}}' 127.0.0.1:8443 badge.identity.v1.NamespaceService/CreateNamespace >/dev/null
    $G -d '{"service_account":{"metadata":{"name":"'"$sa"'","namespace":"'"$ns"'"}}}' 127.0.0.1:8443 badge.identity.v1.ServiceAccountService/CreateServiceAccount >/dev/null
    $G -d '{"pod":{"metadata":{"name":"'"$pod"'","namespace":"'"$ns"'"},"spec":{"service_account_name":"'"$sa"'","node_name":"node-0001","containers":[{"name":"app","image":"app"}]}}}' 127.0.0.1:8443 badge.identity.v1.PodService/CreatePod >/dev/null
  fi
  local uid
  uid=$($G -d '{"namespace":"'"$ns"'","name":"'"$pod"'"}' 127.0.0.1:8443 badge.identity.v1.PodService/GetPod | python3 -c 'import json,sys; print(json.load(sys.stdin)["metadata"]["uid"])')
  $G -d '{"namespace":"'"$ns"'","name":"'"$sa"'","audiences":["bench"],"bound_object_ref":{"kind":"Pod","api_version":"v1","name":"'"$pod"'","uid":"'"$uid"'"}}' \
    127.0.0.1:8444 badge.token.v1.TokenService/CreateToken | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])' >"$dir/token"
  local TLS=(--ca "$dir/pki/ca.pem" --cert "$dir/pki/admin.pem" --key "$dir/pki/admin-key.pem")
  echo "== [$name] echo ceiling"
  "$R/badge-bench" ceiling --connections 2 --in-flight 64 --duration "$DUR" | grep -E "rate|latency"
  echo "== [$name] CreateTokenReview, pod-bound token, warm signature cache"
  "$R/badge-bench" run --target https://127.0.0.1:8446 "${TLS[@]}" --connections 2 --in-flight 64 \
    --duration "$DUR" token-review --token-file "$dir/token" --audience bench | grep -E "rate|latency|errors"
  if [ "$name" = small ]; then
    # A second token-review with the cache off: every review decodes and verifies.
    uncached_review "$dir" "$db" 8456
    echo "== [$name] CreateTokenReview, signature verified every time (cache_entries = 0)"
    "$R/badge-bench" run --target https://127.0.0.1:8456 "${TLS[@]}" --connections 2 --in-flight 64 \
      --duration "$DUR" token-review --token-file "$dir/token" --audience bench | grep -E "rate|latency|errors"
    pkill -f "token-review serve --config $dir/review-uncached.toml" || true
  fi
  pkill -f "badge up --data-dir $dir" || true
  sleep 2
}
mkdir -p "$work/small" "$work/large"
psql -qh 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS badge_review_small WITH (FORCE)" >/dev/null
run small "$PG/badge_review_small" apps web web-1
run large "$PG/badge_scale" ns-000 sa-000000 pod-000000
psql -qh 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS badge_review_small WITH (FORCE)" >/dev/null
