#!/usr/bin/env bash
# Entrypoint of the local timescale/timescaledb image, after the documented behaviour of the
# upstream postgres image: on an empty PGDATA, initdb with POSTGRES_USER/POSTGRES_PASSWORD, create
# POSTGRES_DB, run /docker-entrypoint-initdb.d/* against a server that listens on the socket only
# (so nobody connects before initialisation ends), stop it; then exec the server as PID 1 under the
# postgres user so signals reach it.
set -Eeuo pipefail

if [[ "${1:-}" == -* ]]; then set -- postgres "$@"; fi
if [[ "${1:-}" != postgres ]]; then exec "$@"; fi

if [[ "$(id -u)" == 0 ]]; then
  mkdir -p "$PGDATA"
  chown postgres:postgres "$PGDATA"
  chmod 700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$BASH_SOURCE" "$@"
fi

# docker-library's file_env: VAR_FILE names a file (a Docker secret under /run/secrets/) holding VAR.
file_env() {
  local var="$1" file_var="${1}_FILE"
  if [[ -n "${!var:-}" && -n "${!file_var:-}" ]]; then
    echo "error: both $var and $file_var are set (but are exclusive)" >&2
    exit 1
  fi
  if [[ -n "${!file_var:-}" ]]; then
    export "$var"="$(< "${!file_var}")"
    unset "$file_var"
  fi
}
file_env POSTGRES_PASSWORD
file_env POSTGRES_USER
file_env POSTGRES_DB

: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"

run_init_file() {
  local f="$1"
  local psql=(psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc --dbname "$POSTGRES_DB")
  case "$f" in
    *.sh)     echo "$0: running $f"; if [[ -x "$f" ]]; then "$f"; else . "$f"; fi ;;
    *.sql)    echo "$0: running $f"; "${psql[@]}" -f "$f" ;;
    *.sql.gz) echo "$0: running $f"; gunzip -c "$f" | "${psql[@]}" ;;
    *)        echo "$0: ignoring $f" ;;
  esac
}

if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
  if [[ -z "${POSTGRES_PASSWORD:-}" ]]; then
    echo "error: database is uninitialized and POSTGRES_PASSWORD is not set; set POSTGRES_PASSWORD to a non-empty value for the superuser $POSTGRES_USER" >&2
    exit 1
  fi
  # A failed init empties the data directory again, so the next start retries it (and fails as
  # loudly) instead of serving a half-initialised database.
  trap 'echo "$0: initialisation failed; emptying $PGDATA" >&2; pg_ctl -D "$PGDATA" -m immediate -w stop >/dev/null 2>&1 || true; find "$PGDATA" -mindepth 1 -delete' ERR
  # shellcheck disable=SC2086  # POSTGRES_INITDB_ARGS is a list of flags, as upstream
  initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
         --auth-local=trust --auth-host=scram-sha-256 ${POSTGRES_INITDB_ARGS:-}
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  if [[ "${TIMESCALEDB_TELEMETRY:-}" == off ]]; then
    echo "timescaledb.telemetry_level = off" >> "$PGDATA/postgresql.conf"
  fi

  pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p 5432" -w start
  if [[ "$POSTGRES_DB" != postgres ]]; then
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc --dbname postgres \
         --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db"'
  fi
  shopt -s nullglob
  for f in /docker-entrypoint-initdb.d/*; do run_init_file "$f"; done  # globs expand sorted
  pg_ctl -D "$PGDATA" -m fast -w stop
  trap - ERR
  echo "$0: PostgreSQL init process complete; ready for start up."
fi

exec "$@"
