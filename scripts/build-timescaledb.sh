#!/usr/bin/env bash
# Usage: scripts/build-timescaledb.sh <timescaledb-X.Y.Z.tar.gz>
#
# Compiles the TimescaleDB release archive, with this project's patches (patches/timescaledb-<version>/
# next to this script, applied in name order; each says what it fixes and why), and installs the
# extension into the PostgreSQL whose pg_config comes first on PATH (or $PG_CONFIG): the library into
# `pg_config --pkglibdir`, the control and SQL files into `pg_config --sharedir`/extension, plus
# timescaledb-<version>.patches there (the sha256 of each patch applied; make timescaledb compares it).
# Nothing else: it installs no packages, edits no postgresql.conf and needs no sudo, so it runs the
# same on a host (as root, or as a user who may write those folders) and in a Docker build stage.
# Each file is put in place by a rename, so a server that has the old library loaded keeps running.
#
# Needs: cmake, gcc, make, patch, the server headers of that PostgreSQL (postgresql-server-dev-15) and
# libssl-dev; the caller installs them. The archive should already be verified
# (scripts/fetch-source.sh timescaledb prints the path of a sha256-checked one). A version without a
# patches/timescaledb-<version>/ folder is refused: decide which patches it still needs (an empty
# folder when none) before building it.
#
# Environment:
#   PG_CONFIG  pg_config to build against (default: the one on PATH)
#   DESTDIR    install under this root instead of / (e.g. a staging folder to COPY --from in a
#              multi-stage image); the paths below it are still pg_config's
#   BUILD_DIR  where to unpack and compile (default: a temp dir, removed afterwards); a given
#              folder is kept, so a second run recompiles only what changed
#   JOBS       parallel compile jobs (default: nproc)
#   TIMESCALEDB_UNPATCHED=1  build the release exactly as published, without the patches (the tests
#              that show what a patch fixes)
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
for tool in cmake make cc patch; do
  command -v "$tool" >/dev/null || { echo "build-timescaledb: $tool not found (needs cmake gcc make patch)" >&2; exit 1; }
done
patches_root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/patches"
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

patches="$patches_root/timescaledb-$version"
if [[ "${TIMESCALEDB_UNPATCHED:-}" == 1 ]]; then
  applied="unpatched (TIMESCALEDB_UNPATCHED=1)"
else
  [[ -d "$patches" ]] || { echo "build-timescaledb: no patch folder $patches for TimescaleDB $version: create it with the patches this version still needs (empty when none)" >&2; exit 1; }
  applied=""
  for p in "$patches"/*.patch; do
    [[ -e "$p" ]] || continue
    patch -d "$work/src" -p1 --forward --batch --quiet < "$p" \
      || { echo "build-timescaledb: $(basename "$p") does not apply to TimescaleDB $version" >&2; exit 1; }
    echo "applied $(basename "$p")"
    applied+="$(cd "$patches" && sha256sum "$(basename "$p")")"$'\n'
  done
fi

cmake -S "$work/src" -B "$work/build" \
  -DPG_CONFIG="$PG_CONFIG" \
  -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DWARNINGS_AS_ERRORS=OFF -DLINTER=OFF \
  -DGENERATE_DOWNGRADE_SCRIPT=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  || { echo "build-timescaledb: cmake configure failed (see above)" >&2; exit 1; }
make -C "$work/build" -j"${JOBS:-$(nproc)}" \
  || { echo "build-timescaledb: compile failed (see above)" >&2; exit 1; }
# Staged first, then each file renamed into place: a running server keeps the library it mapped,
# and one started meanwhile finds either the old file or the new one, never half of one.
stage="$work/stage"
rm -rf "$stage"
make -C "$work/build" install DESTDIR="$stage" \
  || { echo "build-timescaledb: make install into the staging folder $stage failed (see above)" >&2; exit 1; }
printf '%s' "$applied" > "$stage$("$PG_CONFIG" --sharedir)/extension/timescaledb-$version.patches"
target="${DESTDIR:-}"
(cd "$stage" && find . -type f) | while read -r f; do
  dest="$target/${f#./}"
  { mkdir -p "$(dirname "$dest")" && cp -p "$stage/$f" "$dest.new" && mv -f "$dest.new" "$dest"; } \
    || { echo "build-timescaledb: installing $dest failed (permissions? run as root or set DESTDIR)" >&2; exit 1; }
done

echo "installed timescaledb $version into ${DESTDIR:-}$("$PG_CONFIG" --pkglibdir)"
