#!/usr/bin/env bash
# Rotation of many pods on one node agent (issue 15, "Performance"), dist-profile
# binaries, one `badge up` on a fresh database:
#   (a) agent start → every pod holds its first X.509-SVID; errors;
#   (b) SIGHUP: every SVID renewed, spread over refresh_jitter_ms: renewals per
#       second (max, mean), first → last, errors, every pod a new serial;
#   (c) the natural refresh due times (beginRefreshAt + jitter) of the issued
#       certificates: first → last and the busiest second.
# Everything is read from the agent's JSON log: one line per issuance or rotation
# (pod, SPIFFE ID, serial, due time; never a key or a certificate).
# Needs PostgreSQL on 127.0.0.1:5432. Loopback only (ports PORT_BASE..+4, 18443 by
# default, so as not to meet a `badge up` on the default ports); every step is
# bounded in time. PODS=1000 JITTER_MS=20000 by default.
# The binaries come from $CARGO_TARGET_DIR/dist, built when missing (BUILD=1:
# always, e.g. after changing the agent).
set -euo pipefail
cd "$(dirname "$0")/.."
PODS=${PODS:-1000}
JITTER_MS=${JITTER_MS:-20000}
DB=${DB:-postgres://postgres@127.0.0.1:5432}
PORT_BASE=${PORT_BASE:-18443}
T=${CARGO_TARGET_DIR:-$PWD/target}
R=$T/dist
need=${BUILD:-0}
for b in badge badgectl badge-agent; do [ -x "$R/$b" ] || need=1; done
if [ "$need" = 1 ]; then
  timeout 1800 cargo build --profile dist -q -p badge-cli -p badge-agent --bins
fi
work=$(mktemp -d)
db="$DB/badge_bench_agent_$$"
up_pid=""
agent_pid=""
cleanup() {
  # Only the processes started here, by pid (`timeout` forwards the signal).
  for p in $agent_pid $up_pid; do kill "$p" 2>/dev/null || true; done
  for p in $agent_pid $up_pid; do timeout 15 tail --pid="$p" -f /dev/null 2>/dev/null || true; done
  psql -qh 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS \"${db##*/}\" WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
step() { printf '== %s (%s)\n' "$*" "$(date -u +%T)"; }

step "badge up on ${db##*/}"
# Audit lines of 2,000+ issuances are not what is measured; keep the log quiet.
RUST_LOG="info,audit=warn" timeout 900 "$R/badge" up --data-dir "$work/up" --database-url "$db" \
  --identity-listen "127.0.0.1:$PORT_BASE" --issuer-listen "127.0.0.1:$((PORT_BASE + 1))" \
  --oidc-listen "127.0.0.1:$((PORT_BASE + 2))" --review-listen "127.0.0.1:$((PORT_BASE + 3))" \
  --webhook-listen "127.0.0.1:$((PORT_BASE + 4))" >"$work/up.log" 2>&1 &
up_pid=$!
for _ in $(seq 1 300); do [ -f "$work/up/badge.env" ] && break; sleep 0.2; done
[ -f "$work/up/badge.env" ] || { tail -20 "$work/up.log"; exit 1; }
sleep 1
# Exported: badgectl and badge-agent read their endpoints and credentials from it.
set -a
# shellcheck disable=SC1091
source "$work/up/badge.env"
set +a

step "objects: namespace, service account, node, RBAC, $PODS pods bound to node-a"
{
  printf 'apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n---\n'
  printf 'apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: web, namespace: bench}\n---\n'
  printf 'apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\n---\n'
  # The node agent's RBAC, as examples/node-agent-objects.yaml.
  sed -n '/^kind: ClusterRole$/,$p' examples/node-agent-objects.yaml | sed '1i apiVersion: rbac.authorization.k8s.io/v1'
  for i in $(seq 0 $((PODS - 1))); do
    printf -- '---\napiVersion: v1\nkind: Pod\nmetadata: {name: pod-%d, namespace: bench}\nspec:\n  serviceAccountName: web\n  nodeName: node-a\n  containers: [{name: app, image: example/app:1}]\n' "$i"
  done
} >"$work/objects.yaml"
t=$(date +%s.%N)
timeout 600 "$R/badgectl" apply -f "$work/objects.yaml" >"$work/apply.log"
printf '   applied in %.1f s\n' "$(echo "$(date +%s.%N) - $t" | bc)"
"$R/badge" issue-client --dir "$work/up/pki" --stem node-a --user system:node:node-a \
  --group system:nodes >/dev/null

# One entry per pod. Selectors never matching a process (uids above any real one):
# only issuance and rotation are measured, and no caller gets another's identity.
{
  printf 'node: node-a\nsocket: %s/agent.sock\nrefresh_jitter_ms: %d\n' "$work" "$JITTER_MS"
  printf 'log: {level: info, format: json}\nworkloads:\n'
  for i in $(seq 0 $((PODS - 1))); do
    printf -- '- {selectors: ["unix:uid:%d"], namespace: bench, pod: pod-%d, service_account: web}\n' \
      $((4000000000 + i)) "$i"
  done
} >"$work/agent.yaml"

count() { grep -c "\"message\":\"$1\"" "$work/agent.log" || true; }
wait_for() { # message, how many, seconds
  local deadline=$(($(date +%s) + $3))
  while [ "$(count "$1")" -lt "$2" ]; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "   only $(count "$1") of $2 '$1' after $3 s" >&2
      return 1
    fi
    sleep 0.2
  done
}

step "badge-agent node with $PODS workloads (refresh_jitter_ms $JITTER_MS)"
t_start=$(date +%s.%N)
timeout 900 "$R/badge-agent" node --agent-config "$work/agent.yaml" \
  --client-cert "$work/up/pki/node-a.pem" --client-key "$work/up/pki/node-a-key.pem" \
  >"$work/agent.log" 2>&1 &
agent_pid=$!
wait_for "X.509-SVID issued" "$PODS" 300
# The agent itself (timeout's child) gets SIGHUP.
agent=$(pgrep -P "$agent_pid" -x badge-agent)
sleep 2
step "SIGHUP: renew every SVID"
t_hup=$(date +%s.%N)
kill -HUP "$agent"
wait_for "X.509-SVID rotated" "$PODS" $((JITTER_MS / 1000 + 120))
sleep 1

python3 - "$work/agent.log" "$t_start" "$t_hup" "$PODS" "$JITTER_MS" <<'PY'
import collections, datetime, json, sys
path, t_start, t_hup, pods, jitter_ms = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
issued, rotated, problems = {}, {}, collections.Counter()
for line in open(path):
    try:
        e = json.loads(line)
    except ValueError:
        continue
    ts = datetime.datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()
    m = e.get("message", "")
    if m == "X.509-SVID issued":
        issued[e["pod"]] = (ts, e["serial"], int(e["refresh_at_unix_ms"]) / 1000)
    elif m == "X.509-SVID rotated":
        rotated[e["pod"]] = (ts, e["serial"])
    elif e.get("level") in ("WARN", "ERROR"):
        problems[m.split(":")[0][:80]] += 1

def per_second(times):
    c = collections.Counter(int(t) for t in times)
    span = max(times) - min(times)
    return max(c.values()), len(times) / max(span, 1.0), span

rows = []
it = sorted(t for t, _, _ in issued.values())
rows.append(("(a) agent start → first SVID of every pod", f"{len(issued)}/{pods} in {it[-1] - t_start:.2f} s (first {it[0] - t_start:.2f} s, median {it[len(it)//2] - t_start:.2f} s)"))
rt = sorted(t for t, _ in rotated.values())
mx, mean, span = per_second(rt)
rows.append(("(b) SIGHUP → renewals, first → last", f"+{rt[0] - t_hup:.2f} s → +{rt[-1] - t_hup:.2f} s ({span:.1f} s for a {jitter_ms / 1000:.0f} s jitter window)"))
rows.append(("(b) renewals per second", f"max {mx}, mean {mean:.1f}"))
new = sum(1 for p, (_, s) in rotated.items() if p in issued and issued[p][1] != s)
rows.append(("(b) pods with a new certificate", f"{new}/{pods}"))
due = sorted(d for _, _, d in issued.values())
mx, mean, span = per_second(due)
first = datetime.datetime.fromtimestamp(due[0], datetime.timezone.utc).strftime("%H:%M:%S")
rows.append(("(c) natural refresh due times", f"{first} UTC + {span / 3600:.2f} h (first → last), busiest second {mx}, mean {mean:.2f}/s"))
rows.append(("errors / warnings in the agent's log", str(sum(problems.values())) + ("" if not problems else " " + json.dumps(dict(problems)))))
w = max(len(a) for a, _ in rows)
print(f"\n| {'measure':<{w}} | result |\n|{'-' * (w + 2)}|--------|")
for a, b in rows:
    print(f"| {a:<{w}} | {b} |")
PY
