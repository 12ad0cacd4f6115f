#!/usr/bin/env bash
# Usage: scripts/build-timescaledb.sh <timescaledb-X.Y.Z.tar.gz>
#
# Compiles the TimescaleDB release archive and installs the extension into the PostgreSQL whose
# pg_config comes first on PATH (or $PG_CONFIG): the library into `pg_config --pkglibdir`, the
# control and SQL files into `pg_config --sharedir`/extension. Nothing else: it installs no
# packages, edits no postgresql.conf and needs no sudo, so it runs the same on a host (as root, or as
# a user who may write those folders) and in a Docker build stage.
#
# Needs: cmake, gcc, make, the server headers of that PostgreSQL (postgresql-server-dev-15) and
# libssl-dev; the caller installs them. The archive should already be verified
# (scripts/fetch-source.sh timescaledb prints the path of a sha256-checked one).
#
# Environment:
#   PG_CONFIG  pg_config to build against (default: the one on PATH)
#   DESTDIR    install under this root instead of / (e.g. a staging folder to COPY --from in a
#              multi-stage image); the paths below it are still pg_config's
#   BUILD_DIR  where to unpack and compile (default: a temp dir, removed afterwards); a given
#              folder is kept, so a second run recompiles only what changed
#   JOBS       parallel compile jobs (default: nproc)
#
# Build options are the vendor README's: no regression/TAP tests, no linters, no downgrade script,
# RelWithDebInfo. Output: cmake/make progress on stdout; last line "installed timescaledb <version>
# into <pkglibdir>". Exit status non-zero on any failure, with the failing step named on stderr.
set -euo pipefail

archive="${1:?usage: scripts/build-timescaledb.sh <timescaledb-X.Y.Z.tar.gz>}"
[[ -f "$archive" ]] || { echo "build-timescaledb: $archive: no such file" >&2; exit 1; }
archive="$(realpath "$archive")"

PG_CONFIG="${PG_CONFIG:-$(command -v pg_config || true)}"
[[ -n "$PG_CONFIG" && -x "$PG_CONFIG" ]] \
  || { echo "build-timescaledb: pg_config not found: install postgresql-server-dev-<major> or set PG_CONFIG" >&2; exit 1; }
for tool in cmake make cc; do
  command -v "$tool" >/dev/null || { echo "build-timescaledb: $tool not found (needs cmake gcc make)" >&2; exit 1; }
done
[[ -f "$("$PG_CONFIG" --includedir-server)/postgres.h" ]] \
  || { echo "build-timescaledb: no server headers for $("$PG_CONFIG" --version): install postgresql-server-dev-<major>" >&2; exit 1; }

if [[ -n "${BUILD_DIR:-}" ]]; then
  work="$BUILD_DIR"
  mkdir -p "$work"
else
  work="$(mktemp -d "${TMPDIR:-/tmp}/timescaledb-build.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
fi

# The release archive holds one top folder (timescaledb-X.Y.Z); unpack it without assuming its name.
rm -rf "$work/src"
mkdir -p "$work/src"
tar -xzf "$archive" -C "$work/src" --strip-components=1
version="$(sed -n 's/^version *= *//p' "$work/src/version.config")"

cmake -S "$work/src" -B "$work/build" \
  -DPG_CONFIG="$PG_CONFIG" \
  -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DWARNINGS_AS_ERRORS=OFF -DLINTER=OFF \
  -DGENERATE_DOWNGRADE_SCRIPT=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  || { echo "build-timescaledb: cmake configure failed (see above)" >&2; exit 1; }
make -C "$work/build" -j"${JOBS:-$(nproc)}" \
  || { echo "build-timescaledb: compile failed (see above)" >&2; exit 1; }
make -C "$work/build" install \
  || { echo "build-timescaledb: install into $("$PG_CONFIG" --pkglibdir) failed (permissions? run as root or set DESTDIR)" >&2; exit 1; }

echo "installed timescaledb $version into ${DESTDIR:-}$("$PG_CONFIG" --pkglibdir)"
