#!/usr/bin/env bash
# Usage: scripts/install-timescaledb.sh          (what `make timescaledb` runs)
#
# Gives this host's PostgreSQL 15 the TimescaleDB version pinned in scripts/sources.lock, with the
# patches of scripts/patches/timescaledb-<version>/, the first way that works:
#   1. already installed at that version with those patches -> nothing to do;
#   2. Timescale's apt repository is configured and the version needs no patch
#                                                   -> apt-get install timescaledb-2-postgresql-15=<version>;
#   3. the release archive can be had               -> scripts/fetch-source.sh + scripts/build-timescaledb.sh
#      (TIMESCALEDB_SOURCE: a path or URL)              (as root, the build packages are apt-get installed first);
#   4. otherwise one line saying why, and the native-partitioning fallback.
# 2.17.2 needs one patch on Debian 12's PostgreSQL 15.20 (scheduled jobs would all be recorded as
# failed): an install of the same version without it (a build from before the patch) is rebuilt.
# With CI=true, case 4 is an error (exit 1): CI must test the TimescaleDB path. Otherwise it is a
# notice and exit 0, and the TimescaleDB tests skip.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PG_MAJOR="${PG_MAJOR:-15}"
export PG_CONFIG="${PG_CONFIG:-/usr/lib/postgresql/$PG_MAJOR/bin/pg_config}"
version="$(awk '$1 == "timescaledb" {print $2}' "$ROOT/scripts/sources.lock")"
package="timescaledb-2-postgresql-$PG_MAJOR"
build_packages=(cmake gcc make patch "postgresql-server-dev-$PG_MAJOR" libssl-dev)
patches="$ROOT/scripts/patches/timescaledb-$version"
# What build-timescaledb.sh records in timescaledb-<version>.patches for these patches.
wanted_patches="$(cd "$patches" 2>/dev/null && for p in *.patch; do [[ -e "$p" ]] && sha256sum "$p"; done || true)"

fallback() {
  if [[ "${CI:-}" == true ]]; then
    echo "timescaledb: $1 — CI must test TimescaleDB: failing (set TIMESCALEDB_SOURCE to the release archive)" >&2
    exit 1
  fi
  echo "timescaledb: $1 — using native partitioning; the TimescaleDB tests will skip"
  exit 0
}

[[ -x "$PG_CONFIG" ]] || fallback "PostgreSQL $PG_MAJOR is not installed ($PG_CONFIG missing: make system-deps)"
control="$("$PG_CONFIG" --sharedir)/extension/timescaledb.control"
stamp="$("$PG_CONFIG" --sharedir)/extension/timescaledb-$version.patches"
installed() {
  [[ -f "$control" ]] && grep -q "^default_version = '$version'" "$control" \
    && [[ -f "$("$PG_CONFIG" --pkglibdir)/timescaledb-$version.so" ]] \
    && { [[ -z "$wanted_patches" && ! -f "$stamp" ]] || [[ -f "$stamp" && "$(cat "$stamp")" == "$wanted_patches" ]]; }
}
installed && exit 0

root=false
[[ "$(id -u)" == 0 ]] && root=true

# 2. Timescale's own package, when this machine has their apt repository (e.g. packagecloud) and the
#    version needs none of our patches (the package is built without them).
apt_version="$(apt-cache madison "$package" 2>/dev/null | awk -v v="$version" '$3 ~ "^"v"~" {print $3; exit}')"
if [[ -n "$apt_version" && -z "$wanted_patches" ]]; then
  $root || fallback "$package=$apt_version is available but this is not root: run sudo apt-get install $package=$apt_version timescaledb-2-loader-postgresql-$PG_MAJOR=$apt_version"
  echo "==> apt-get install $package=$apt_version"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "$package=$apt_version" "timescaledb-2-loader-postgresql-$PG_MAJOR=$apt_version" >/dev/null
  installed && exit 0
  fallback "$package=$apt_version installed but $control does not name $version"
fi

# 3. Build from the pinned release archive.
archive="$("$ROOT/scripts/fetch-source.sh" timescaledb 2>&1)" || fallback "$archive"
missing=()
for p in "${build_packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  $root || fallback "building TimescaleDB $version needs: sudo apt-get install ${missing[*]}"
  echo "==> apt-get install ${missing[*]} (to build TimescaleDB $version)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! $root && [[ ! -w "$("$PG_CONFIG" --pkglibdir)" ]]; then
  fallback "installing TimescaleDB $version into $("$PG_CONFIG" --pkglibdir) needs root: run sudo make timescaledb"
fi

echo "==> building TimescaleDB $version from $archive (about 1-2 min on 2 cores)"
log="$ROOT/var/log/timescaledb-build.log"
mkdir -p "$(dirname "$log")"
start=$SECONDS
if ! "$ROOT/scripts/build-timescaledb.sh" "$archive" >"$log" 2>&1; then
  tail -n 20 "$log" >&2
  fallback "the build failed (log: $log)"
fi
echo "==> $(tail -n 1 "$log") in $((SECONDS - start)) s"
installed || fallback "built, but $control does not name $version"
