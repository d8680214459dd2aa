#!/usr/bin/env bash
# Measures Badge against this machine's own ceilings, in one run:
#   1. one-core signing rates of pre-parsed keys (RS256, ES256);
#   2. the tonic echo ceiling over the same mTLS (client and server on these cores),
#      twice: in one process (`badge-bench ceiling`: the server on Badge's runtime,
#      the clients on their own threads), and as a separate echo-server process
#      like Badge's own (64 B, and the size of the reviewed token);
#   3. per algorithm (ES256, RS256) against `badge up`: CreateToken, CreateTokenReview of
#      one of its tokens with a warm cache and with the cache off (a second
#      token-review process: every review decodes and verifies); SubjectAccessReview;
#   4. workload certificates (scripts/bench-certificates.sh): CSR verification per core,
#      Istio CreateCertificate (ECDSA P-256, RSA-3072), CreatePodCertificate and a
#      10,000-workload fleet restart, beside the echo ceiling of that run;
#   5. identity writes (scripts/bench-writes.sh): pgbench's one-row INSERT ceiling,
#      then CreateServiceAccount, service-account churn and pod churn beside it;
#   6. identity reads (scripts/bench-reads.sh): GetServiceAccount and a List of 1,000
#      beside the echo ceiling of that run.
# Needs PostgreSQL on 127.0.0.1:5432. Loopback only; every run is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-10s}
N=${N:-2}
M=${M:-64}
DB=${DB:-postgres://postgres@127.0.0.1:5432}
cargo build --profile dist -q -p badge-cli -p badge-bench -p badge-keys -p badge-token-review -p badgectl --bins --example sign_rate
T=${CARGO_TARGET_DIR:-$PWD/target}
R=$T/dist
B=$R/badge-bench
# shellcheck source=scripts/uncached-review.sh
source scripts/uncached-review.sh
work=$(mktemp -d)
trap 'pkill -f "token-review serve --config $work" || true; pkill -f "badge up --data-dir $work" || true; pkill -f "echo-server --listen 127.0.0.1:$ECHO_PORT" || true; rm -rf "$work"' EXIT
ECHO_PORT=${ECHO_PORT:-9555}
# echo_process <payload bytes>: the echo service in its own process, loaded like Badge.
echo_process() {
  echo "== echo ceiling, echo-server process ($1 B payload, $N connections x $M in flight, $DUR)"
  "$B" run --target "https://127.0.0.1:$ECHO_PORT" "${TLS[@]}" --connections "$N" --in-flight "$M" \
    --duration "$DUR" echo --payload-bytes "$1" | grep -E "rate|latency"
}

echo "== one-core signing (pre-parsed aws-lc-rs keys)"
"$T/dist/examples/sign_rate"

for alg in ES256 RS256; do
  db="$DB/badge_bench_$(echo "$alg" | tr 'A-Z' 'a-z')_$$"
  # Audit events off for the measurement (they are written by a background thread,
  # but formatting them still costs CPU on these 2 cores).
  RUST_LOG="info,audit=warn" "$T/dist/badge" up --data-dir "$work/$alg" \
    --database-url "$db" --algorithm "$alg" >"$work/$alg.log" 2>&1 &
  for _ in $(seq 1 100); do [ -f "$work/$alg/badge.env" ] && break; sleep 0.2; done
  sleep 1
  # shellcheck disable=SC1090
  source "$work/$alg/badge.env"
  TLS=(--ca "$BADGE_CA" --cert "$BADGE_CLIENT_CERT" --key "$BADGE_CLIENT_KEY")
  "$B" echo-server --listen "127.0.0.1:$ECHO_PORT" --ca "$BADGE_CA" \
    --cert "$work/$alg/pki/identity.pem" --key "$work/$alg/pki/identity-key.pem" >"$work/echo.log" 2>&1 &
  echo "== echo ceiling, in process ($N connections x $M in flight, $DUR)"
  "$B" ceiling --connections "$N" --in-flight "$M" --duration "$DUR" | grep -E "rate|latency"
  echo_process 64
  echo "== CreateToken $alg"
  "$B" run --target "$BADGE_ISSUER_ENDPOINT" "${TLS[@]}" --connections "$N" --in-flight "$M" \
    --duration "$DUR" create-token --namespace default --service-account default --audience bench \
    | grep -E "rate|latency|errors"
  grpcurl -cacert "$BADGE_CA" -cert "$BADGE_CLIENT_CERT" -key "$BADGE_CLIENT_KEY" \
    -d '{"namespace":"default","name":"default","audiences":["bench"]}' \
    "${BADGE_ISSUER_ENDPOINT#https://}" badge.token.v1.TokenService/CreateToken \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])' >"$work/token"
  echo_process "$(tr -d '\n' <"$work/token" | wc -c)"
  echo "== CreateTokenReview, $alg token, warm cache"
  "$B" run --target "$BADGE_REVIEW_ENDPOINT" "${TLS[@]}" --connections "$N" --in-flight "$M" \
    --duration "$DUR" token-review --token-file "$work/token" --audience bench \
    | grep -E "rate|latency|errors"
  uncached_review "$work/$alg" "$db" 8456
  echo "== CreateTokenReview, $alg token, decoded and verified every time (cache_entries = 0)"
  "$B" run --target https://127.0.0.1:8456 "${TLS[@]}" --connections "$N" --in-flight "$M" \
    --duration "$DUR" token-review --token-file "$work/token" --audience bench \
    | grep -E "rate|latency|errors"
  pkill -f "token-review serve --config $work/$alg" || true
  if [ "$alg" = ES256 ]; then
    echo "== CreateSubjectAccessReview (RBAC decisions from memory)"
    "$B" run --target "$BADGE_REVIEW_ENDPOINT" "${TLS[@]}" --connections "$N" --in-flight "$M" \
      --duration "$DUR" subject-access-review --user system:serviceaccount:default:default \
      --group system:serviceaccounts --group system:authenticated \
      --verb create --api-group authorization.k8s.io --resource selfsubjectaccessreviews --expect-allowed \
      | grep -E "rate|latency|errors"
  fi
  pkill -f "echo-server --listen 127.0.0.1:$ECHO_PORT" || true
  pkill -f "badge up --data-dir $work/$alg" || true
  sleep 1
  psql -qh 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS \"${db##*/}\" WITH (FORCE)" >/dev/null 2>&1 || true
done

BUILT=1 DUR=$DUR N=$N M=$M DB=$DB scripts/bench-certificates.sh
DUR=8s N=$N M=32 DB=$DB scripts/bench-writes.sh
BUILT=1 DUR=8s N=$N M=$M DB=$DB scripts/bench-reads.sh
