# syntax=docker/dockerfile:1
#
# connect-extension-mongodb — container image.
#
#   docker build -t connect-extension-mongodb .
#   docker run --rm -p 127.0.0.1:8080:8080 -e HTTP_TOKEN=change-me connect-extension-mongodb
#
# Configuration is environment variables only (docs/operations.md has the full reference).
# The image listens on 0.0.0.0:8080, which the daemon accepts only with HTTP_TOKEN set: it refuses
# to start otherwise, naming the variable. Connect's channel runs when API_KEY and ENVIRONMENT_ID
# are set. The embedded SQLite store (when no MongoDB is configured) lives on the /data volume.

# ---- build ------------------------------------------------------------------------------------
# Same toolchain as CI; the locked dependencies need Rust >= 1.89.
FROM rust:1.95-bookworm AS build
WORKDIR /src
# The whole (filtered, see .dockerignore) source tree: Cargo.toml may name tests/benches targets,
# which cargo wants to see even to build the binary alone.
COPY . .
# BuildKit cache mounts keep the registry and compiled dependencies between builds (BuildKit is
# the default builder since Docker 23 and in Compose v2; older engines: DOCKER_BUILDKIT=1, and
# COMPOSE_DOCKER_CLI_BUILD=1 for docker-compose 1.x). The binary is copied out of the cached
# target/ in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin connect-extension-mongodb \
    && install -D -m 0755 target/release/connect-extension-mongodb /out/connect-extension-mongodb \
    && mkdir -p /out/data

# ---- runtime ----------------------------------------------------------------------------------
# Distroless "cc": glibc, libgcc, CA certificates (wss:// to Connect, TLS to Atlas), no shell,
# no package manager; the :nonroot tag runs as uid/gid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
WORKDIR /app
COPY --from=build /out/connect-extension-mongodb /usr/local/bin/connect-extension-mongodb
# config/default.toml is also embedded in the binary; config/ is here so an operator can mount
# config/local.toml beside it (layered over the defaults, under the environment).
COPY config ./config
# An empty, non-root-owned /data: a named volume mounted there starts with this ownership.
COPY --from=build --chown=65532:65532 /out/data /data

ENV HTTP_LISTEN=0.0.0.0:8080 \
    LOCAL_DATA_DIR=/data \
    RUST_LOG=info
VOLUME ["/data"]
EXPOSE 8080
USER 65532:65532

# `health` GETs /health on the address in HTTP_LISTEN and exits non-zero when it does not answer;
# no curl needed.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/connect-extension-mongodb", "health"]

# Exec form: the daemon is PID 1 and receives SIGTERM itself; it stops intake and finishes
# in-flight events within SHUTDOWN_GRACE seconds (keep `docker stop -t` / stop_grace_period above it).
ENTRYPOINT ["/usr/local/bin/connect-extension-mongodb"]
CMD ["run"]
