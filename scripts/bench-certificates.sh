#!/usr/bin/env bash
# Workload certificate issuance (issue 14) against `badge up`, in one run beside this
# machine's echo ceiling:
#   1. one core's CSR parse + proof-of-possession verification (badge_ca::csr, what
#      both certificate APIs run per request) for ECDSA P-256 and RSA-3072 CSRs;
#   2. the echo ceiling over the same mTLS: in one process (`badge-bench ceiling`), and
#      as an echo-server process with 64 B and with an Istio request's size (its CSR);
#   3. istio.v1.auth.IstioCertificateService/CreateCertificate with ECDSA P-256 and with
#      RSA-3072 subject keys (a pool of CSRs, one key each; bearer token, audience istio-ca);
#   4. badge.certificates.v1.PodCertificateService/CreatePodCertificate as the pod's node
#      (client certificate CN=system:node:<node>, O=system:nodes);
#   5. a fleet restart: FLEET (10,000) workloads over ACCOUNTS service accounts, each
#      with its own key and CSR, all asking at once over FLEET_CONNECTIONS connections
#      (opened inside the measured time); fails unless every one is answered OK within
#      DEADLINE. Reports the time to serve all.
# Audit events are off for the measurement (RUST_LOG audit=warn), as in bench.sh.
# Needs PostgreSQL on 127.0.0.1:5432. Loopback only; every run is bounded in time.
# BUILT=1 skips the build (bench.sh has done it).
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-10s}
N=${N:-2}
M=${M:-64}
DB=${DB:-postgres://postgres@127.0.0.1:5432}
FLEET=${FLEET:-10000}
ACCOUNTS=${ACCOUNTS:-20}
FLEET_CONNECTIONS=${FLEET_CONNECTIONS:-100}
DEADLINE=${DEADLINE:-120s}
ECHO_PORT=${ECHO_PORT:-9556}
if [ -z "${BUILT:-}" ]; then
  cargo build --profile dist -q -p badge-cli -p badge-bench -p badgectl --bins
fi
T=${CARGO_TARGET_DIR:-$PWD/target}
R=$T/dist
B=$R/badge-bench
work=$(mktemp -d)
db="$DB/badge_bench_certificates_$$"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  psql -qh 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS \"${db##*/}\" WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
# bounded <seconds> <command...>: no step may hang the script.
bounded() { local s=$1; shift; timeout --kill-after=5 "$s" "$@"; }

echo "== one-core CSR parse + verification (badge_ca::csr::parse_pem / parse_der)"
bounded 120 "$B" csr-rate --key-type ECDSAP256 --key-type RSA3072 --json >"$work/csr-rate.json"
python3 - "$work/csr-rate.json" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(f"{r['key_type']:<10} CSR {r['der_bytes']} B DER / {r['pem_bytes']} B PEM: "
          f"parse_pem {r['parse_pem_per_second']:,.0f}/s, parse_der {r['parse_der_per_second']:,.0f}/s per core")
EOF
csr_bytes=$(python3 -c 'import json,sys; print([json.loads(l) for l in open(sys.argv[1])][0]["pem_bytes"] + 3)' "$work/csr-rate.json")

# Audit events off for the measurement (written by a background thread, but
# formatting them still costs CPU on these cores).
RUST_LOG="info,audit=warn" "$R/badge" up --data-dir "$work/up" --database-url "$db" \
  >"$work/up.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 150); do [ -f "$work/up/badge.env" ] && break; sleep 0.2; done
[ -f "$work/up/badge.env" ] || { cat "$work/up.log"; exit 1; }
# shellcheck disable=SC1091
source "$work/up/badge.env"
TLS=(--ca "$BADGE_CA" --cert "$BADGE_CLIENT_CERT" --key "$BADGE_CLIENT_KEY")
# The trust domain is the issuer URL's host (ca.trust_domain is not set).
td=${BADGE_ISSUER_URL#https://}
td=${td%%[:/]*}
ctl() { bounded 30 "$R/badgectl" --config "$work/up/badge.env" "$@"; }

# The workloads: ACCOUNTS service accounts in namespace bench, one pod (of
# workload-0) on node bench-node, and RBAC for the nodes' PodCertificateRequests.
{
  printf 'apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n'
  for i in $(seq 0 $((ACCOUNTS - 1))); do
    printf -- '---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: workload-%d, namespace: bench}\n' "$i"
  done
  cat <<'EOF'
---
apiVersion: v1
kind: Node
metadata: {name: bench-node}
---
apiVersion: v1
kind: Pod
metadata: {name: workload-0-pod, namespace: bench}
spec: {serviceAccountName: workload-0, nodeName: bench-node}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: bench-pod-certificates}
rules:
- {apiGroups: [certificates.k8s.io], resources: [podcertificaterequests], verbs: [create]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: bench-pod-certificates}
subjects:
- {kind: Group, name: "system:nodes", apiGroup: rbac.authorization.k8s.io}
roleRef: {kind: ClusterRole, name: bench-pod-certificates, apiGroup: rbac.authorization.k8s.io}
EOF
} >"$work/workloads.yaml"
ctl apply -f "$work/workloads.yaml" >/dev/null
tokens=()
for i in $(seq 0 $((ACCOUNTS - 1))); do
  ctl -n bench create token "workload-$i" --audience istio-ca >"$work/token-$i"
  tokens+=(--token-file "$work/token-$i")
done
uid() { ctl "$@" -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["metadata"]["uid"])'; }
pod_uid=$(uid -n bench get po workload-0-pod)
sa_uid=$(uid -n bench get sa workload-0)
node_uid=$(uid get no bench-node)
bounded 30 "$R/badge" issue-client --dir "$work/up/pki" --stem bench-node \
  --user system:node:bench-node --group system:nodes >/dev/null
NODE_TLS=(--ca "$BADGE_CA" --cert "$work/up/pki/bench-node.pem" --key "$work/up/pki/bench-node-key.pem")
POD=(pod-certificate --namespace bench --pod workload-0-pod --pod-uid "$pod_uid"
  --service-account workload-0 --service-account-uid "$sa_uid" --node bench-node --node-uid "$node_uid")

# Ready: the first CA signs, and the RBAC binding has reached the issuer.
ready() {
  for _ in $(seq 1 50); do
    if bounded 30 "$B" burst --target "$BADGE_ISSUER_ENDPOINT" --requests 1 --connections 1 \
      --deadline 5s "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "not ready: $*" >&2
  exit 1
}
ready "${TLS[@]}" istio-certificate --token-file "$work/token-0" --trust-domain "$td" --pool 1
ready "${NODE_TLS[@]}" "${POD[@]}" --pool 1

"$B" echo-server --listen "127.0.0.1:$ECHO_PORT" --ca "$BADGE_CA" \
  --cert "$work/up/pki/identity.pem" --key "$work/up/pki/identity-key.pem" >"$work/echo.log" 2>&1 &
pids+=($!)
sleep 0.5
# measure <key> <title> <badge-bench args, with --json>: a line for people, the JSON
# kept for the summary.
measure() {
  local key=$1 title=$2
  shift 2
  echo "== $title ($N connections x $M in flight, $DUR)"
  bounded 400 "$B" "$@" >"$work/$key.json"
  python3 - "$work/$key.json" <<'EOF'
import json, sys
r = json.loads(open(sys.argv[1]).read())
l = r["latency_ms"] or {}
print(f"rate {r['rate_rps']:,.0f} req/s (ok {r['ok_rps']:,.0f}), errors {r['errors']} {r['errors_by_code'] or ''}, "
      f"cut off {r['cut_off']}; latency ms p50 {l.get('p50')} p99 {l.get('p99')} p999 {l.get('p999')} max {l.get('max')}")
EOF
}
LOAD=(--connections "$N" --in-flight "$M" --duration "$DUR" --json)
ECHO=(run --target "https://127.0.0.1:$ECHO_PORT" "${TLS[@]}" "${LOAD[@]}" echo)
ISSUER=(run --target "$BADGE_ISSUER_ENDPOINT" "${LOAD[@]}")
measure echo-inproc "echo ceiling, in process, 64 B" ceiling "${LOAD[@]}"
measure echo-64 "echo ceiling, echo-server process, 64 B" "${ECHO[@]}" --payload-bytes 64
measure echo-csr "echo ceiling, echo-server process, $csr_bytes B (an Istio request's CSR)" \
  "${ECHO[@]}" --payload-bytes "$csr_bytes"
measure istio-ecdsap256 "Istio CreateCertificate, ECDSA P-256 CSRs ($ACCOUNTS accounts, 256 CSRs)" \
  "${ISSUER[@]}" "${TLS[@]}" istio-certificate "${tokens[@]}" --trust-domain "$td" --key-type ECDSAP256 --pool 256
measure istio-rsa3072 "Istio CreateCertificate, RSA-3072 CSRs ($ACCOUNTS accounts, 64 CSRs)" \
  "${ISSUER[@]}" "${TLS[@]}" istio-certificate "${tokens[@]}" --trust-domain "$td" --key-type RSA3072 --pool 64
measure pod-ecdsap256 "CreatePodCertificate as the pod's node, ECDSA P-256 stub CSRs" \
  "${ISSUER[@]}" "${NODE_TLS[@]}" "${POD[@]}" --pool 256

echo "== fleet restart: $FLEET workloads over $ACCOUNTS service accounts at once, $FLEET_CONNECTIONS connections, deadline $DEADLINE"
set +e
bounded 400 "$B" burst --target "$BADGE_ISSUER_ENDPOINT" "${TLS[@]}" --requests "$FLEET" \
  --connections "$FLEET_CONNECTIONS" --deadline "$DEADLINE" \
  istio-certificate "${tokens[@]}" --trust-domain "$td" --pool "$FLEET" | tee "$work/fleet.txt"
fleet=${PIPESTATUS[0]}
set -e

echo "== summary"
python3 - "$work" <<'EOF'
import json, sys, os
w = sys.argv[1]
def load(n): return json.loads(open(os.path.join(w, n + ".json")).read())
echo, echo64 = load("echo-csr"), load("echo-64")
csr = {json.loads(l)["key_type"]: json.loads(l) for l in open(os.path.join(w, "csr-rate.json"))}
size = csr["ECDSAP256"]["pem_bytes"] + 3
print(f"echo-server process: {echo64['ok_rps']:,.0f}/s (64 B, p99 {echo64['latency_ms']['p99']} ms), "
      f"{echo['ok_rps']:,.0f}/s ({size} B, p99 {echo['latency_ms']['p99']} ms)")
for n in ["istio-ecdsap256", "istio-rsa3072", "pod-ecdsap256"]:
    r = load(n); l = r["latency_ms"] or {}
    print(f"{n:<16} {r['ok_rps']:>8,.0f}/s  {100 * r['ok_rps'] / echo['ok_rps']:5.1f} % of the {size} B echo "
          f"({100 * r['ok_rps'] / echo64['ok_rps']:.1f} % of 64 B)  p50 {l.get('p50')} ms  p99 {l.get('p99')} ms  "
          f"errors {r['errors']}")
rsa = load("istio-rsa3072")["ok_rps"]
v = csr["RSA3072"]["parse_pem_per_second"]
print(f"RSA-3072 CSR verification: {v:,.0f}/s on one core = {v / max(rsa, 1):.1f}x the RSA-3072 issuance rate "
      f"(verification is {100 * rsa / v:.0f} % of one core at that rate)")
EOF
exit "$fleet"
