#!/usr/bin/env bash
# Two replicas of each Badge service on one Postgres, on loopback: what an operator
# sees behind a load balancer. Creates a pod and a pod-bound token through one
# replica, reviews it on both token-review replicas, deletes the pod through the
# other identity replica and times how long each review replica takes to reject the
# token; then rotates keys on one issuer and lists them on both.
# Needs PostgreSQL on 127.0.0.1:5432, grpcurl, and the binaries (BIN, default
# target/dist: cargo build --profile dist --bins).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$root/target/dist}
DB=${DB:-postgres://postgres@127.0.0.1:5432/badge_replicas_$$}
work=$(mktemp -d)
cd "$work"
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  psql -qh 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS \"${DB##*/}\" WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

"$BIN/badge" dev-pki >/dev/null
"$BIN/badge" kek >/dev/null
"$BIN/badge" migrate --database-url "$DB" >/dev/null
ISSUER='["https://127.0.0.1:9445"]'
export BADGE_DATABASE__URL="$DB" RUST_LOG=warn
for r in 0 1; do
  p=$((9443 + 10 * r))
  "$BIN/badge-identity" serve --config "$root/examples/identity.toml" \
    --set server.listen=127.0.0.1:$p --set "authentication.issuers=$ISSUER" >"id$r.log" 2>&1 &
  pids+=($!)
done
sleep 1
for r in 0 1; do
  p=$((9444 + 10 * r))
  "$BIN/badge-token-issuer" serve --config "$root/examples/token-issuer.toml" \
    --set server.listen=127.0.0.1:$p --set oidc.listen=127.0.0.1:$((p + 1)) \
    --set "token.issuers=$ISSUER" --set identity.endpoint=https://127.0.0.1:9443 \
    --set external_signer.socket="$work/signer$r.sock" >"is$r.log" 2>&1 &
  pids+=($!)
  p=$((9446 + 10 * r))
  "$BIN/badge-token-review" serve --config "$root/examples/token-review.toml" \
    --set server.listen=127.0.0.1:$p --set webhook.listen=127.0.0.1:$((p + 1)) \
    --set "review.issuers=$ISSUER" --set identity.endpoint=https://127.0.0.1:9443 >"rv$r.log" 2>&1 &
  pids+=($!)
done
pki=badge-data/pki
for port in 9443 9453 9444 9454 9446 9456; do
  for _ in $(seq 1 100); do
    "$BIN/badge" health --endpoint https://127.0.0.1:$port --ca $pki/ca.pem \
      --cert $pki/admin.pem --key $pki/admin-key.pem >/dev/null 2>&1 && break
    sleep 0.2
  done
done
G="grpcurl -cacert $pki/ca.pem -cert $pki/admin.pem -key $pki/admin-key.pem"
$G -d '{"namespace":{"metadata":{"name":"apps"}}}' 127.0.0.1:9443 badge.identity.v1.NamespaceService/CreateNamespace >/dev/null
$G -d '{"service_account":{"metadata":{"name":"web","namespace":"apps"}}}' \
  127.0.0.1:9443 badge.identity.v1.ServiceAccountService/CreateServiceAccount >/dev/null
uid=$($G -d '{"pod":{"metadata":{"name":"web-1","namespace":"apps"},"spec":{"service_account_name":"web","containers":[{"name":"c","image":"busybox"}]}}}' \
  127.0.0.1:9443 badge.identity.v1.PodService/CreatePod | python3 -c 'import json,sys; print(json.load(sys.stdin)["metadata"]["uid"])')
token=$($G -d '{"namespace":"apps","name":"web","audiences":["vault"],"bound_object_ref":{"kind":"Pod","api_version":"v1","name":"web-1","uid":"'"$uid"'"}}' \
  127.0.0.1:9454 badge.token.v1.TokenService/CreateToken | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
review() {
  $G -d '{"spec":{"token":"'"$token"'","audiences":["vault"]}}' "127.0.0.1:$1" \
    badge.review.v1.TokenReviewService/CreateTokenReview \
    | python3 -c 'import json,sys; s=json.load(sys.stdin)["status"]; print("authenticated" if s.get("authenticated") else "rejected: "+s.get("error",""))'
}
echo "token from issuer replica 2; review replica 1: $(review 9446); replica 2: $(review 9456)"
$G -d '{"namespace":"apps","name":"web-1"}' 127.0.0.1:9453 badge.identity.v1.PodService/DeletePod >/dev/null
# Each grpcurl run costs ~0.3 s of process start and reflection, so this shows
# whether the first review after DeletePod returned already rejects (the e2e tests
# time the same path in-process: milliseconds).
for port in 9446 9456; do
  n=1
  while out=$(review $port) && [ "$out" = authenticated ]; do n=$((n + 1)); done
  echo "pod deleted on identity replica 2 → review replica :$port $out (review attempt $n after DeletePod returned)"
done
$G 127.0.0.1:9444 badge.token.v1.KeyService/RotateKeys >/dev/null
keys() { $G 127.0.0.1:$1 badge.token.v1.KeyService/ListKeys | python3 -c 'import json,sys; print(sorted((k["kid"][:8], k.get("state","")) for k in json.load(sys.stdin).get("keys",[])))'; }
sleep 0.5
echo "after RotateKeys on issuer replica 1: replica 1 keys $(keys 9444)"
echo "                                      replica 2 keys $(keys 9454)"
