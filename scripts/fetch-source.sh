#!/usr/bin/env bash
# Usage: scripts/fetch-source.sh <name>
# Prints the path of the verified release archive of <name> (a line of scripts/sources.lock).
# The archive comes from $<NAME>_SOURCE (a path or a URL) or else the upstream URL; downloads are
# kept in var/cache/sources/. The sha256 must match the lock file whatever the origin.
# On failure: one line on stderr naming the cause and the variable to set, exit status 1.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCK="$ROOT/scripts/sources.lock"
CACHE="${SOURCES_CACHE_DIR:-$ROOT/var/cache/sources}"

name="${1:?usage: scripts/fetch-source.sh <name> (one of: $(grep -v '^#' "$LOCK" | cut -d' ' -f1 | xargs))}"
read -r _ version sha256 url < <(awk -v n="$name" '$1 == n' "$LOCK") || true
if [[ -z "${version:-}" ]]; then
  echo "fetch-source: no '$name' in $LOCK (known: $(grep -v '^#' "$LOCK" | cut -d' ' -f1 | xargs))" >&2
  exit 1
fi
var="$(echo "$name" | tr '[:lower:]-' '[:upper:]_')_SOURCE"
origin="${!var:-$url}"
fail() { echo "$name $version source not available: $1; set $var to a path or URL of $name-$version.tar.gz (sha256 $sha256)" >&2; exit 1; }

verify() { [[ "$(sha256sum "$1" | cut -d' ' -f1)" == "$sha256" ]]; }

case "$origin" in
  http://*|https://*)
    archive="$CACHE/$name-$version.tar.gz"
    if [[ ! -f "$archive" ]] || ! verify "$archive"; then
      mkdir -p "$CACHE"
      command -v curl >/dev/null || fail "curl is not installed (needed to download $origin)"
      curl -fsSL --connect-timeout 10 --max-time 300 -o "$archive.part" "$origin" 2>/dev/null \
        || { rm -f "$archive.part"; fail "download of $origin failed"; }
      mv "$archive.part" "$archive"
    fi
    ;;
  *)
    archive="$(realpath -m "$origin")"
    [[ -f "$archive" ]] || fail "$origin does not exist"
    ;;
esac
verify "$archive" || fail "$archive has sha256 $(sha256sum "$archive" | cut -d' ' -f1), not the pinned one"
echo "$archive"
