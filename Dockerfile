# gridproof: the validator, gateway and trusted-setup binaries in one slim image.
#   docker build -t gridproof .
#   docker compose up          # four validators on this host (see compose.yaml)
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends clang libclang-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# RocksDB's C++ is the long part of this build (about 25 minutes on 2 cores).
RUN cargo build --release -p verifier-node -p device -p keys \
 && cp target/release/verifier-node target/release/device target/release/keys /usr/local/bin/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home /var/lib/gridproof --create-home gridproof
COPY --from=build /usr/local/bin/verifier-node /usr/local/bin/device /usr/local/bin/keys /usr/local/bin/
USER gridproof
WORKDIR /var/lib/gridproof
# Healthy while a validator's HTTP API answers on the default address (node.toml `http`);
# compose.yaml names each validator's own, and a gateway or setup container disables it.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s CMD ["verifier-node", "status", "--http", "127.0.0.1:8100"]
ENTRYPOINT ["verifier-node"]
CMD ["--help"]
