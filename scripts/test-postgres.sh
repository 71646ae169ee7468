#!/usr/bin/env bash
# Provision a PostgreSQL test server: Debian's PostgreSQL 15 binaries, a private cluster bound to
# 127.0.0.1 on a free port, SCRAM-SHA-256 password auth and TLS with a test CA; in the background.
#
#   scripts/test-postgres.sh [start]   install if needed, start (or reuse) the server, write the env file
#   scripts/test-postgres.sh stop      stop the server of $POSTGRES_HOME (pg_ctl stop -m fast; idempotent)
#   scripts/test-postgres.sh env       print the env file (`eval "$(scripts/test-postgres.sh env)"`)
#   scripts/test-postgres.sh clean     stop, then delete $POSTGRES_HOME (and its run dir, see below)
#
# PostgreSQL refuses to run as root. As root (CI), initdb/pg_ctl/postgres run as the `postgres` OS
# user (created if missing) through runuser; otherwise as the current user. When the postgres package
# is missing, root installs it with apt-get (postgresql-15, else postgresql) without letting Debian
# create and start its own `main` cluster. See docs/postgres-backend.md (shared notes) §3.
#
# Env knobs:
#   POSTGRES_HOME      env, port, password, tls/ (CA), and the run dir        (default <repo>/target/postgres/server)
#                      run dir = data/, sock/, server.crt/.key, server.log: $POSTGRES_HOME itself, owned by the
#                      server user; if that user cannot reach $POSTGRES_HOME (e.g. under /root, mode 700) or
#                      the socket path would be too long, /tmp/cem-pg-<hash of POSTGRES_HOME> instead.
#   POSTGRES_BIN       the PostgreSQL bin dir   (default /usr/lib/postgresql/15/bin, else the newest installed)
#   POSTGRES_PORT      port on 127.0.0.1 (default: the port this home used last, else a free one)
#   POSTGRES_PASSWORD  password of the role connect_test (default: generated once per home, kept in
#                      $POSTGRES_HOME/password)
#   POSTGRES_FRESH=1   wipe the data dir before starting
# The role `connect_test` (LOGIN CREATEDB, SCRAM-SHA-256 password) owns the database `connect_test`.
# pg_hba: local (socket dir mode 700) trust; hostssl and host 127.0.0.1/32 scram-sha-256.
# On success prints the variables below (password masked) and writes them, as `export …` lines, to
# $POSTGRES_HOME/env:
#   POSTGRES_URL       postgres://connect_test:PW@127.0.0.1:PORT/connect_test
#   POSTGRES_TLS_URL   postgres://connect_test:PW@localhost:PORT/connect_test?sslmode=verify-full&sslrootcert=CA
#   POSTGRES_TEST_CA   the test CA certificate (PEM) that signed the server certificate
#                      (SANs: DNS localhost, IP 127.0.0.1); its key is $POSTGRES_HOME/tls/ca.key
#   POSTGRES_HOME, POSTGRES_BIN
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HOME_DIR=${POSTGRES_HOME:-$ROOT/target/postgres/server}
HOME_DIR=$(realpath -m "$HOME_DIR")
ROLE=connect_test
DB=connect_test
PORTF=$HOME_DIR/port
PWF=$HOME_DIR/password
RUNF=$HOME_DIR/rundir                 # where data/ lives (see above)
TLS=$HOME_DIR/tls
ENVF=$HOME_DIR/env
CMD=${1:-start}

# Our own psql/pg_ctl calls pass everything explicitly; stray PG* settings must not leak in.
unset PGDATA PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGPASSWORD PGPASSFILE PGSERVICE PGSSLMODE \
      PGSSLROOTCERT PGSSLCERT PGSSLKEY PGOPTIONS PGCHANNELBINDING PGTARGETSESSIONATTRS

log() { printf 'test-postgres: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

if [[ $(id -u) == 0 ]]; then
  SERVER_USER=postgres
  RUNAS=(runuser -u postgres --)
else
  SERVER_USER=$(id -un)
  RUNAS=()
fi

run_dir() { if [[ -f $RUNF ]]; then cat "$RUNF"; else echo "$HOME_DIR"; fi; }

set_paths() {
  RUN=$1
  DATA=$RUN/data
  SOCK=$RUN/sock
  LOG=$RUN/server.log
}

# Running = the postmaster of postmaster.pid exists and is not a zombie: a postmaster that was
# stopped or killed can linger as a zombie for a while, and kill -0 (so pg_ctl status) counts it.
# Linux only (/proc).
alive() {
  [[ -f $DATA/postmaster.pid ]] || return 1
  local pid state
  pid=$(head -n 1 "$DATA/postmaster.pid")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  state=$(sed -E 's/^.*\) ([A-Za-z]).*$/\1/' "/proc/$pid/stat" 2>/dev/null) || return 1
  [[ -n $state && $state != Z && $state != X ]] || return 1
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == postgres* ]]    # not a reused pid (never signal a stranger)
}

find_bin() {
  if [[ -n ${POSTGRES_BIN:-} ]]; then PG_BIN=$POSTGRES_BIN; return; fi
  if [[ -x /usr/lib/postgresql/15/bin/postgres ]]; then PG_BIN=/usr/lib/postgresql/15/bin; return; fi
  local newest
  newest=$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/postgres' 2>/dev/null | sort -V | tail -n 1)
  PG_BIN=${newest%/postgres}
}

stop_server() {
  if [[ ! -f $DATA/postmaster.pid ]]; then
    echo "postgres not running ($DATA)"
    return 0
  fi
  local pid; pid=$(head -n 1 "$DATA/postmaster.pid")
  if ! alive; then # e.g. after kill -9. postgres would refuse to start while the pid is a zombie
    rm -f "$DATA/postmaster.pid" "$SOCK"/.s.PGSQL.*   # the socket lock file names the pid too
    echo "postgres not running (removed a stale postmaster.pid, pid $pid)"
    return 0
  fi
  if ! (cd / && "${RUNAS[@]}" "$PG_BIN/pg_ctl" stop -D "$DATA" -m fast -w -t 30 >/dev/null); then
    if [[ -f $DATA/postmaster.pid ]]; then
      log "pg_ctl stop failed; sending SIGTERM/SIGKILL to postmaster $pid"
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 300); do alive || break; sleep 0.1; done
      if alive; then kill -KILL "$pid" 2>/dev/null || true; sleep 0.5; fi
      rm -f "$DATA/postmaster.pid" "$SOCK"/.s.PGSQL.*
    fi
  fi
  echo "postgres stopped (pid $pid)"
}

# --- stop / env / clean: never install or create anything ---------------------------------------
case $CMD in
  stop|clean)
    find_bin
    set_paths "$(run_dir)"
    if [[ -f $DATA/postmaster.pid && ! -x $PG_BIN/pg_ctl ]]; then die "no pg_ctl in '$PG_BIN'; set POSTGRES_BIN"; fi
    stop_server
    if [[ $CMD == clean ]]; then
      [[ $RUN == "$HOME_DIR" ]] || rm -rf "$RUN"
      rm -rf "$HOME_DIR"
      echo "removed $HOME_DIR"
    fi
    exit 0 ;;
  env)
    [[ -f $ENVF ]] || die "no $ENVF: run '$0 start' first"
    cat "$ENVF"
    find_bin
    set_paths "$(run_dir)"
    alive || die "the server of $HOME_DIR is not running"
    exit 0 ;;
  start) ;;
  *) echo "usage: $0 [start|stop|env|clean]" >&2; exit 2 ;;
esac

# --- 1. Install (idempotent; one install at a time) ---------------------------------------------
apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-upgrade "$@" >/dev/null
}

find_bin
if [[ ! -x $PG_BIN/postgres ]] || ! command -v openssl >/dev/null; then
  [[ $(id -u) == 0 ]] || die "PostgreSQL server binaries not found (POSTGRES_BIN='$PG_BIN') or openssl missing; install postgresql-15 and openssl (Debian) or set POSTGRES_BIN"
  command -v apt-get >/dev/null || die "PostgreSQL server binaries not found and there is no apt-get; set POSTGRES_BIN"
  exec 9>"${TMPDIR:-/tmp}/cem-test-postgres-install.lock"
  flock 9
  find_bin
  if [[ ! -x $PG_BIN/postgres ]] || ! command -v openssl >/dev/null; then
    log "installing PostgreSQL with apt-get (once)…"
    apt-get update -qq
    command -v openssl >/dev/null || apt_install openssl
    # Keep Debian from creating and starting its own cluster (`main` on 5432) on install.
    apt_install postgresql-common
    conf=/etc/postgresql-common/createcluster.conf
    if grep -qE '^[[:space:]]*create_main_cluster' "$conf" 2>/dev/null; then
      sed -i -E 's/^[[:space:]]*create_main_cluster.*/create_main_cluster = false/' "$conf"
    else
      echo 'create_main_cluster = false' >> "$conf"
    fi
    if apt-cache show postgresql-15 >/dev/null 2>&1; then apt_install postgresql-15; else apt_install postgresql; fi
    find_bin
  fi
  flock -u 9
  exec 9>&-
  [[ -x $PG_BIN/postgres ]] || die "still no PostgreSQL server binaries after apt-get install (POSTGRES_BIN='$PG_BIN')"
fi
if [[ $(id -u) == 0 ]] && ! id postgres >/dev/null 2>&1; then
  log "creating the system user postgres"
  useradd --system --no-create-home --shell /usr/sbin/nologin postgres
fi

# --- 2. Directories: the run dir must be reachable by the server user -----------------------------
mkdir -p "$HOME_DIR"
chmod 755 "$HOME_DIR"
can_use_home() {
  # unix socket paths are limited to 107 bytes: "$HOME_DIR/sock/.s.PGSQL.65535"
  (( ${#HOME_DIR} + 21 <= 107 )) || return 1
  [[ $(id -u) != 0 ]] || (cd / && runuser -u postgres -- test -x "$HOME_DIR")
}
if [[ -f $RUNF ]]; then
  RUN=$(cat "$RUNF")
elif can_use_home; then
  RUN=$HOME_DIR
else
  RUN=/tmp/cem-pg-$(printf %s "$HOME_DIR" | sha256sum | cut -c1-16)
  log "the server user cannot use $HOME_DIR; its data lives in $RUN"
fi
echo "$RUN" > "$RUNF"
set_paths "$RUN"
mkdir -p "$RUN" "$SOCK" "$TLS"
chmod 755 "$RUN"
chmod 700 "$SOCK"                    # local connections are trusted: only the server user may reach the socket
chmod 755 "$TLS"                     # ca.crt readable by the tests; ca.key is 0600
[[ $(id -u) != 0 ]] || chown "$SERVER_USER:" "$RUN" "$SOCK"

# --- 3. The port: explicit, else the one this home used last (so a restart keeps its URL), else free.
port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
if [[ -n ${POSTGRES_PORT:-} ]]; then
  PORT=$POSTGRES_PORT
elif [[ -f $PORTF ]] && { alive || ! port_taken "$(cat "$PORTF")"; }; then
  PORT=$(cat "$PORTF")
else
  PORT=$(free_port)
fi

# --- 4. Password and TLS material (once per home) ------------------------------------------------
if [[ -n ${POSTGRES_PASSWORD:-} ]]; then
  PASSWORD=$POSTGRES_PASSWORD
else
  [[ -s $PWF ]] || (umask 077 && openssl rand -hex 16 > "$PWF")
  PASSWORD=$(cat "$PWF")
fi

if [[ ! -s $TLS/ca.crt || ! -s $RUN/server.crt || ! -s $RUN/server.key ]]; then
  (
    set -e
    cd "$TLS"
    umask 077
    openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -sha256 -days 3650 \
      -keyout ca.key -out ca.crt.tmp -subj "/CN=connect-extension-mongodb test CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -sha256 \
      -keyout server.key -out server.csr -subj "/CN=localhost" 2>/dev/null
    printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
      "extendedKeyUsage=serverAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1" \
      "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid" > server.ext
    openssl x509 -req -in server.csr -CA ca.crt.tmp -CAkey ca.key -CAcreateserial -sha256 -days 3650 \
      -extfile server.ext -out server.crt 2>/dev/null
    rm -f server.csr server.ext ca.crt.srl ca.crt.tmp.srl
    chmod 644 ca.crt.tmp server.crt
    mv ca.crt.tmp ca.crt
  ) || die "openssl failed to make the test certificates in $TLS"
  mv "$TLS/server.key" "$TLS/server.crt" "$RUN/"
fi
chmod 600 "$RUN/server.key"           # the server refuses a key readable by others
[[ $(id -u) != 0 ]] || chown "$SERVER_USER:" "$RUN/server.key" "$RUN/server.crt"

# --- 5. Cluster, settings, start -------------------------------------------------------------------
if [[ ${POSTGRES_FRESH:-0} == 1 ]]; then
  stop_server >/dev/null
  rm -rf "$DATA"
fi

# A value in postgresql.conf syntax: single-quoted, quotes doubled.
q() { printf "'%s'" "${1//\'/\'\'}"; }

write_conf() { # rewritten on each start: the port may change
  local tmp=$RUN/cem_test.conf.tmp
  {
    echo "# written by scripts/test-postgres.sh on each start"
    echo "listen_addresses = '127.0.0.1'"
    echo "port = $PORT"
    echo "unix_socket_directories = $(q "$SOCK")"
    echo "unix_socket_permissions = 0700"
    echo "password_encryption = 'scram-sha-256'"
    echo "ssl = on"
    echo "ssl_cert_file = $(q "$RUN/server.crt")"
    echo "ssl_key_file = $(q "$RUN/server.key")"
    echo "max_connections = 200"
    echo "fsync = off                  # a test server: safe against process kills, not OS crashes"
    echo "full_page_writes = off"
  } > "$tmp"
  [[ $(id -u) != 0 ]] || chown "$SERVER_USER:" "$tmp"
  mv "$tmp" "$DATA/cem_test.conf"
  # first match wins; `local` is reachable only through the 0700 socket dir
  printf '%s\n' "# written by scripts/test-postgres.sh" \
    "local   all all                trust" \
    "hostssl all all 127.0.0.1/32   scram-sha-256" \
    "host    all all 127.0.0.1/32   scram-sha-256" > "$DATA/pg_hba.conf"
  [[ $(id -u) != 0 ]] || chown "$SERVER_USER:" "$DATA/pg_hba.conf"
}

psql_admin() { # as the superuser, over the unix socket
  (cd / && "${RUNAS[@]}" "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$PORT" -U postgres -d postgres "$@")
}

start_server() {
  if port_taken "$PORT"; then
    die "port $PORT on 127.0.0.1 is already taken by another process; set POSTGRES_PORT"
  fi
  write_conf
  echo "$PORT" > "$PORTF"
  echo "=== $(date -Is) starting postgres (port $PORT)" >> "$LOG"
  [[ $(id -u) != 0 ]] || chown "$SERVER_USER:" "$LOG"
  if ! (cd / && "${RUNAS[@]}" "$PG_BIN/pg_ctl" start -D "$DATA" -l "$LOG" -w -t 60 >/dev/null); then
    log "postgres did not start; last log lines:"; tail -n 30 "$LOG" >&2; exit 1
  fi
}

if [[ ! -f $DATA/PG_VERSION ]]; then
  rm -rf "$DATA"
  mkdir -p "$DATA"
  chmod 700 "$DATA"
  [[ $(id -u) != 0 ]] || chown "$SERVER_USER:" "$DATA"
  if ! out=$(cd / && "${RUNAS[@]}" "$PG_BIN/initdb" -D "$DATA" -U postgres -E UTF8 --locale=C.UTF-8 \
               --auth-local=trust --auth-host=scram-sha-256 --no-sync 2>&1); then
    printf '%s\n' "$out" >&2; die "initdb failed"
  fi
  echo "include_if_exists = 'cem_test.conf'" >> "$DATA/postgresql.conf"
fi

if alive && [[ $(cat "$PORTF" 2>/dev/null) == "$PORT" ]] \
   && (cd / && "$PG_BIN/pg_isready" -q -h "$SOCK" -p "$PORT" -U postgres -d postgres); then
  echo "postgres already running (pid $(head -n 1 "$DATA/postmaster.pid"), port $PORT)"
else
  [[ ! -f $DATA/postmaster.pid ]] || stop_server >/dev/null
  start_server
  echo "postgres started (pid $(head -n 1 "$DATA/postmaster.pid"), port $PORT, $("$PG_BIN/postgres" --version))"
fi

# --- 6. Role and database (idempotent; also applies a changed POSTGRES_PASSWORD) ------------------
psql_admin -v role="$ROLE" -v db="$DB" -v pw="$PASSWORD" <<'SQL'
SELECT format('CREATE ROLE %I', :'role') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \gexec
ALTER ROLE :"role" LOGIN CREATEDB PASSWORD :'pw';
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'role')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
SQL

# --- 7. Env file; check that the URL really works (TCP, SCRAM) -----------------------------------
enc() { # percent-encode; $2 = characters to keep
  python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=sys.argv[2]))' "$1" "${2:-}"
}
PW_ENC=$(enc "$PASSWORD")
URL="postgres://$ROLE:$PW_ENC@127.0.0.1:$PORT/$DB"
TLS_URL="postgres://$ROLE:$PW_ENC@localhost:$PORT/$DB?sslmode=verify-full&sslrootcert=$(enc "$TLS/ca.crt" /)"
if ! (cd / && "$PG_BIN/psql" -X -A -t -c 'select 1' "$URL" >/dev/null); then
  die "cannot connect with POSTGRES_URL (as $ROLE over TCP); log: $LOG"
fi
sq() { printf "'%s'" "${1//\'/\'\\\'\'}"; }   # shell single-quoting: the URLs contain &
{
  echo "export POSTGRES_URL=$(sq "$URL")"
  echo "export POSTGRES_TLS_URL=$(sq "$TLS_URL")"
  echo "export POSTGRES_TEST_CA=$(sq "$TLS/ca.crt")"
  echo "export POSTGRES_HOME=$(sq "$HOME_DIR")"
  echo "export POSTGRES_BIN=$(sq "$PG_BIN")"
} > "$ENVF"
chmod 600 "$ENVF"
echo "POSTGRES_URL=${URL/:$PW_ENC@/:***@}"
echo "POSTGRES_TLS_URL=${TLS_URL/:$PW_ENC@/:***@}"
echo "POSTGRES_TEST_CA=$TLS/ca.crt"
echo "POSTGRES_HOME=$HOME_DIR"
echo "POSTGRES_BIN=$PG_BIN"
echo "log: $LOG   data: $DATA   env file: $ENVF"
