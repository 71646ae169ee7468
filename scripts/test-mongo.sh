#!/usr/bin/env bash
# Provision a MongoDB-wire-compatible test server: SecantusDB (PyPI `secantusdb`, WiredTiger
# storage), bound to 127.0.0.1, in the background; waits until it answers a ping.
#
#   scripts/test-mongo.sh [start]   install if needed, start (or reuse) the server, write the env file
#   scripts/test-mongo.sh stop      stop the server started from $SECANTUS_HOME
#
# A real `mongod` cannot be installed everywhere; SecantusDB can (Python 3 + PyPI only). It passed
# the driver checks this project relies on (unique index → 11000, unordered insert_many errors,
# auth, restarts). Adapted from the team's tested recipe; see TESTING.md for the caveats.
#
# Env knobs:
#   SECANTUS_HOME      data/, secantusd.log, secantusd.pid, port, env   (default <repo>/target/secantus/server)
#   SECANTUS_VENV      the Python venv, shared by every home            (default <repo>/target/secantus/venv)
#   SECANTUS_PORT      port on 127.0.0.1 (default: the port this home used last, else a free one)
#   SECANTUS_FRESH=1   wipe data/ before starting
#   SECANTUS_AUTH=1    require SCRAM auth; creates $SECANTUS_USER / $SECANTUS_PASSWORD
#                      (default app / app-secret, role root on admin) on first start
# On success prints MONGODB_URI=… and writes `export MONGODB_URI='…'` to $SECANTUS_HOME/env.
set -euo pipefail

VERSION=0.7.0b3                       # only pre-releases exist on PyPI: pin exactly
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HOME_DIR=${SECANTUS_HOME:-$ROOT/target/secantus/server}
VENV=${SECANTUS_VENV:-$ROOT/target/secantus/venv}
USER_NAME=${SECANTUS_USER:-app}
USER_PW=${SECANTUS_PASSWORD:-app-secret}
DATA=$HOME_DIR/data
LOG=$HOME_DIR/secantusd.log
PIDF=$HOME_DIR/secantusd.pid
PORTF=$HOME_DIR/port
CONF=$HOME_DIR/secantusd.toml         # empty: disables auto-discovery of ./secantusd.toml etc.
mkdir -p "$HOME_DIR" "$(dirname "$VENV")"

alive() { [[ -f $PIDF ]] && kill -0 "$(cat "$PIDF")" 2>/dev/null; }

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

ping() { # ping needs no auth, even under --auth
  "$VENV/bin/python" - "mongodb://127.0.0.1:$PORT/" <<'PY' 2>/dev/null
import sys, pymongo
pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=400, connectTimeoutMS=400).admin.command("ping")
PY
}

stop_server() {
  if alive; then
    local pid; pid=$(cat "$PIDF")
    kill -TERM "$pid"
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "secantusd $pid ignored SIGTERM for 30 s; killing" >&2; kill -KILL "$pid"
    fi
    echo "secantusd stopped (pid $pid)"
  fi
  rm -f "$PIDF"
}

start_server() { # extra flags in "$@"
  if port_taken "$PORT"; then
    echo "port $PORT on 127.0.0.1 is already taken by another process; set SECANTUS_PORT" >&2; exit 1
  fi
  : > "$CONF"
  echo "=== $(date -Is) starting secantusd $* (port $PORT)" >> "$LOG"
  nohup "$VENV/bin/secantusd-py" --config "$CONF" --host 127.0.0.1 --port "$PORT" \
        --storage-path "$DATA" "$@" >> "$LOG" 2>&1 < /dev/null &
  echo $! > "$PIDF"
  for _ in $(seq 1 240); do               # up to ~60 s
    if ! alive; then echo "secantusd exited during startup; last log lines:" >&2; tail -n 30 "$LOG" >&2; exit 1; fi
    ping && return 0
    sleep 0.25
  done
  echo "secantusd not answering after 60 s; log: $LOG" >&2; tail -n 30 "$LOG" >&2; exit 1
}

if [[ ${1:-start} == stop ]]; then stop_server; exit 0; fi
if [[ ${1:-start} != start ]]; then echo "usage: $0 [start|stop]" >&2; exit 2; fi

# 1. Install (idempotent; one install at a time when several homes share the venv).
exec 9>"$VENV.lock"
flock 9
if ! "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('secantusdb') != '$VERSION')" 2>/dev/null; then
  echo "installing secantusdb==$VERSION into $VENV (once)…"
  rm -rf "$VENV"
  if ! python3 -m venv "$VENV" 2>/dev/null; then
    echo "python3 -m venv failed; installing python3-venv with apt-get" >&2
    apt-get update -qq && apt-get install -y -qq python3-venv && python3 -m venv "$VENV"
  fi
  "$VENV/bin/pip" install -q --disable-pip-version-check "secantusdb==$VERSION"
fi
flock -u 9

# 2. The port: explicit, else the one this home used last (so a restart keeps its URI), else free.
if [[ -n ${SECANTUS_PORT:-} ]]; then
  PORT=$SECANTUS_PORT
elif [[ -f $PORTF ]] && { alive || ! port_taken "$(cat "$PORTF")"; }; then
  PORT=$(cat "$PORTF")
else
  PORT=$(free_port)
fi

# 3. Reuse or (re)start.
if [[ ${SECANTUS_FRESH:-0} == 1 ]]; then stop_server; rm -rf "$DATA"; fi
if alive && [[ $(cat "$PORTF" 2>/dev/null) == "$PORT" ]] && ping; then
  echo "secantusd already running (pid $(cat "$PIDF"), port $PORT)"
else
  stop_server
  mkdir -p "$DATA"
  echo "$PORT" > "$PORTF"
  if [[ ${SECANTUS_AUTH:-0} == 1 ]]; then
    if [[ ! -f $DATA/.secantus-test-user ]]; then   # no localhost exception: provision without --auth first
      start_server
      "$VENV/bin/python" - "mongodb://127.0.0.1:$PORT/" "$USER_NAME" "$USER_PW" <<'PY'
import sys, pymongo
c = pymongo.MongoClient(sys.argv[1])
if not c.admin.command("usersInfo", sys.argv[2])["users"]:
    c.admin.command("createUser", sys.argv[2], pwd=sys.argv[3], roles=[{"role": "root", "db": "admin"}])
PY
      touch "$DATA/.secantus-test-user"
      stop_server
    fi
    start_server --auth
  else
    start_server
  fi
  echo "secantusd started (pid $(cat "$PIDF"), port $PORT)"
fi

# retryWrites=false: secantus 0.7.0b3 keeps every retryable-write record for 30 min and scans
# (then sorts) them on each write, so writes slow down ~10x after ~10k retryable writes.
if [[ ${SECANTUS_AUTH:-0} == 1 ]]; then
  enc() { python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$1"; }
  URI="mongodb://$(enc "$USER_NAME"):$(enc "$USER_PW")@127.0.0.1:$PORT/?authSource=admin&retryWrites=false"
  SHOWN="mongodb://$(enc "$USER_NAME"):***@127.0.0.1:$PORT/?authSource=admin&retryWrites=false"
else
  URI="mongodb://127.0.0.1:$PORT/?retryWrites=false"
  SHOWN=$URI
fi
printf "export MONGODB_URI='%s'\n" "${URI//\'/\'\\\'\'}" > "$HOME_DIR/env"   # quoted: the URI contains &
echo "MONGODB_URI=$SHOWN"
echo "log: $LOG   data: $DATA   env file: $HOME_DIR/env"
