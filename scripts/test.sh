#!/usr/bin/env bash
# The project's test command:  scripts/test.sh [extra cargo test arguments…]
#
# Uses MONGODB_URI when it is set (your own mongod or Atlas: add `retryWrites=false` only if the
# server is SecantusDB). Otherwise installs (once, into target/secantus/venv) and starts a
# SecantusDB test server on a free loopback port, runs `cargo test --all-targets`, and stops the
# server on exit. A few tests also start private SecantusDB instances of their own (a server they
# can stop and restart); they use the same venv.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ -n ${MONGODB_URI:-} ]]; then
  echo "scripts/test.sh: using MONGODB_URI from the environment"
else
  export SECANTUS_HOME=${SECANTUS_HOME:-$PWD/target/secantus/test-$$}
  cleanup() {
    bash scripts/test-mongo.sh stop || true
    rm -rf "$SECANTUS_HOME"
  }
  trap cleanup EXIT
  trap "exit 130" INT TERM
  SECANTUS_FRESH=1 bash scripts/test-mongo.sh start
  # shellcheck disable=SC1091
  . "$SECANTUS_HOME/env"
fi
export MONGODB_URI
cargo test --all-targets "$@"
