# Badge: the four binaries (badge, badge-identity, badge-token-issuer,
# badge-token-review) built from source, on a slim Debian runtime.
#   docker build -t badge .        (docker-compose.yml builds it for you)

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --profile dist --locked \
      --bin badge --bin badge-identity --bin badge-token-issuer --bin badge-token-review

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/badge --shell /usr/sbin/nologin badge \
 && mkdir -p /var/lib/badge \
 && chown badge:badge /var/lib/badge
COPY --from=build /src/target/dist/badge \
                  /src/target/dist/badge-identity \
                  /src/target/dist/badge-token-issuer \
                  /src/target/dist/badge-token-review \
                  /usr/local/bin/
# A new named volume mounted here starts as this directory (owned by badge), so
# the PKI and key-encryption key written by `pki-init` are readable by the services.
VOLUME /var/lib/badge
WORKDIR /var/lib/badge
USER badge
CMD ["badge", "--help"]
