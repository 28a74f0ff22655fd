# The StaffProBot worker image: one static-ish Rust binary on Debian slim, non-root.
#
#   docker build -t staffprobot-worker .
#   docker run --rm staffprobot-worker --help
#   docker compose up -d          (the whole stack: docker-compose.yml)
#
# Three stages:
#   planner  reduces the source tree to a "recipe": every Cargo.toml, Cargo.lock, and an empty
#            stub at the path of every target cargo knows (lib, bins, tests, benches, build
#            scripts). It is rebuilt on every change but costs seconds, and its output only
#            changes when a manifest or the lockfile does.
#   builder  compiles the dependencies against the recipe (the slow layer, cached until the
#            manifests change), then copies the real sources and compiles the workspace crates.
#   runtime  debian:bookworm-slim with CA certificates and tzdata, the binary, schedules.toml.
#
# Nothing here needs a database: sqlx queries are checked at run time, and the migrations are
# embedded into the binary by `sqlx::migrate!` from jobs/migrations at compile time.

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# --- planner ------------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS planner
WORKDIR /src
COPY . .
# The stub list comes from `cargo metadata`, not from a hand-kept list, so a new workspace
# member (bench/, say) or a new [[test]] is picked up without touching this file.
RUN set -eu; \
    recipe=/recipe; \
    mkdir -p "$recipe"; \
    find . -path ./target -prune -o -type f \( -name Cargo.toml -o -name Cargo.lock \
      -o -name 'rust-toolchain*' -o -path './.cargo/config*' \) -print \
      | xargs cp --parents -t "$recipe"; \
    cargo metadata --no-deps --offline --format-version 1 > /tmp/metadata.json; \
    grep -o '"src_path":"[^"]*"' /tmp/metadata.json | cut -d'"' -f4 | sort -u \
      | while read -r path; do \
          stub="$recipe/${path#"$PWD"/}"; \
          mkdir -p "$(dirname "$stub")"; \
          printf '//! Stub for the dependency layer.\n#[allow(dead_code)]\nfn main() {}\n' > "$stub"; \
        done; \
    find "$recipe" -type f | sort

# --- builder ------------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS builder
# lapin's default TLS is rustls on aws-lc-rs: aws-lc-sys compiles C (and falls back to cmake).
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake gcc g++ make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /build
COPY --from=planner /recipe/ ./
RUN cargo build --release --locked -p worker
COPY . .
# COPY keeps the sources' original mtimes, older than the stub build's outputs: touch them so
# cargo does not take the stub binary for up to date.
RUN set -eu; \
    find . -path ./target -prune -o -type f -name '*.rs' -exec touch {} +; \
    cargo build --release --locked -p worker; \
    install -m 0755 target/release/worker /usr/local/bin/worker; \
    worker --version

# --- runtime ------------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates tzdata \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 worker \
    && useradd --system --uid 10001 --gid worker --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin worker
COPY --from=builder /usr/local/bin/worker /usr/local/bin/worker
# The shipped schedules; replace it with a bind mount or a Kubernetes ConfigMap (read-only).
COPY schedules.toml /etc/worker/schedules.toml
ENV SCHEDULES_FILE=/etc/worker/schedules.toml \
    WORKER_HTTP_ADDR=0.0.0.0:8080 \
    LOG_FORMAT=json
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
EXPOSE 8080
# `worker run` finishes running tasks within WORKER_SHUTDOWN_GRACE after SIGTERM; give the
# container runtime a longer stop timeout (compose: stop_grace_period; Kubernetes:
# terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
# Slim images have no curl: the binary probes its own /healthz.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 CMD ["worker", "healthcheck"]
ENTRYPOINT ["worker"]
CMD ["run"]
