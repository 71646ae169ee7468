#!/usr/bin/env bash
# The project's test command:  scripts/test.sh [extra cargo test arguments…]
#
# Uses MONGODB_URI when it is set (your own mongod or Atlas: add `retryWrites=false` only if the
# server is SecantusDB). Otherwise installs (once, into target/secantus/venv) and starts a
# SecantusDB test server on a free loopback port, runs `cargo test --all-targets` and the doc tests, and stops the
# server on exit. A few tests also start private SecantusDB instances of their own (a server they
# can stop and restart); they use the same venv.
#
# Likewise PostgreSQL: uses POSTGRES_URL when it is set (then POSTGRES_TLS_URL / POSTGRES_TEST_CA too,
# if you have them); otherwise starts a test server with scripts/test-postgres.sh (Debian's
# PostgreSQL 15; installed with apt-get when missing and running as root, as in CI) under
# target/postgres/, and removes it on exit. The postgres tests' outage test starts a private one.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CLEANUPS=()
cleanup() {
  local c
  for c in "${CLEANUPS[@]}"; do eval "$c" || true; done
}
trap cleanup EXIT
trap "exit 130" INT TERM

if [[ -n ${MONGODB_URI:-} ]]; then
  echo "scripts/test.sh: using MONGODB_URI from the environment"
else
  export SECANTUS_HOME=${SECANTUS_HOME:-$PWD/target/secantus/test-$$}
  CLEANUPS+=('bash scripts/test-mongo.sh stop; rm -rf "$SECANTUS_HOME"')
  SECANTUS_FRESH=1 bash scripts/test-mongo.sh start
  # shellcheck disable=SC1091
  . "$SECANTUS_HOME/env"
fi
export MONGODB_URI

if [[ -n ${POSTGRES_URL:-} ]]; then
  echo "scripts/test.sh: using POSTGRES_URL from the environment"
else
  export POSTGRES_HOME=$PWD/target/postgres/test-$$
  CLEANUPS+=('POSTGRES_HOME=$POSTGRES_HOME bash scripts/test-postgres.sh clean')
  POSTGRES_FRESH=1 bash scripts/test-postgres.sh start
  # shellcheck disable=SC1091
  . "$POSTGRES_HOME/env"
fi
export POSTGRES_URL
[[ -z ${POSTGRES_TLS_URL:-} ]] || export POSTGRES_TLS_URL
[[ -z ${POSTGRES_TEST_CA:-} ]] || export POSTGRES_TEST_CA
cargo test --all-targets "$@"
# Doc tests (the crate-level SDK example must compile): `--all-targets` does not run them.
cargo test --doc "$@"
