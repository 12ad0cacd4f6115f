#!/usr/bin/env bash
# Entrypoint of the local redis image, after the upstream image's documented behaviour.
set -euo pipefail

if [[ "${1:-}" == -* || "${1:-}" == *.conf ]]; then set -- redis-server "$@"; fi

if [[ "${1:-}" == redis-server ]]; then
  # Upstream builds redis-server with protected mode off by default: it serves the container
  # network, without a config file. Debian's binary defaults to on, so say it unless the caller did.
  if [[ " $* " != *" --protected-mode "* ]]; then set -- "$@" --protected-mode no; fi
  if [[ "$(id -u)" == 0 ]]; then
    find . \! -user redis -exec chown redis '{}' +
    exec setpriv --reuid=redis --regid=redis --init-groups "$@"
  fi
fi
exec "$@"
