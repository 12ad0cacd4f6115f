#!/usr/bin/env bash
# As the upstream timescale/timescaledb image: the extension exists in template1 (so every new
# database has it) and in POSTGRES_DB before any other init script runs.
set -euo pipefail
for db in template1 "$POSTGRES_DB"; do
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc --dbname "$db" \
       -c 'CREATE EXTENSION IF NOT EXISTS timescaledb CASCADE'
done
