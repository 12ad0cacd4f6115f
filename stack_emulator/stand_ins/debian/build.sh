#!/usr/bin/env bash
# Usage: build.sh <tag>
# The Debian 12 base every local image starts FROM: a `debootstrap --variant=minbase bookworm`
# root imported into the Docker engine, since no registry (and so no debian:bookworm) is reachable.
# Needs root (debootstrap) and an apt mirror: DEBIAN_MIRROR, default deb.debian.org.
set -euo pipefail
tag="${1:?usage: build.sh <tag>}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
security="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"

[[ "$(id -u)" == 0 ]] || { echo "building the Debian base image needs root (debootstrap); run as root or docker load a prepared $tag" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "debootstrap is not installed: apt-get install debootstrap" >&2; exit 1; }

root="$(mktemp -d /tmp/debian-base.XXXXXX)"
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.log" 2>&1 \
  || { tail -5 "$root.log" >&2; echo "debootstrap from $mirror failed (log: $root.log); set DEBIAN_MIRROR to a reachable mirror" >&2; exit 1; }
rm -f "$root.log"

# The same suites the host uses, so images get the same (security-updated) package versions.
cat >"$root/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security bookworm-security main
SOURCES
# As Debian's official images do: no recommends, no docs or locales, no apt caches in layers.
cat >"$root/etc/apt/apt.conf.d/90container" <<'APT'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
APT
cat >"$root/etc/dpkg/dpkg.cfg.d/90container" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/info/*
DPKG
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
       "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*

tar -C "$root" --numeric-owner -c . | docker import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["bash"]' \
  --change 'LABEL com.prediction.local-build=debian:bookworm' \
  - "$tag" >/dev/null
echo "built $tag"
