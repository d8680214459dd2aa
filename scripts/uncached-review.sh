# Sourced by the benchmark scripts. uncached_review <badge up data dir> <database url> <port>:
# starts a second badge-token-review with the verified-token cache off (every review
# decodes and verifies the token), beside a running `badge up`, and waits for it.
# Needs $R (the directory of the dist-profile binaries).
uncached_review() {
  local dir=$1 db=$2 port=$3
  cat >"$dir/review-uncached.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
tls = { ca = "$dir/pki/ca.pem", cert = "$dir/pki/token-review.pem", key = "$dir/pki/token-review-key.pem" }
[database]
url = "$db"
[review]
issuers = ["https://127.0.0.1:8445"]
cache_entries = 0
[encryption]
kek_file = "$dir/kek"
TOML
  RUST_LOG=warn "$R/badge-token-review" serve --config "$dir/review-uncached.toml" >"$dir/review-uncached.log" 2>&1 &
  for _ in $(seq 1 100); do
    "$R/badge" health --endpoint "https://127.0.0.1:$port" --ca "$dir/pki/ca.pem" \
      --cert "$dir/pki/admin.pem" --key "$dir/pki/admin-key.pem" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "the uncached token-review on port $port did not become healthy" >&2
  return 1
}
