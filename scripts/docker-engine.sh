#!/usr/bin/env bash
# Usage: scripts/docker-engine.sh status|start
#   status  exit 0 when a Docker engine answers (DOCKER_HOST, else the local socket)
#   start   make one answer: nothing to do if one does; as root, install docker.io and debootstrap
#           (the Docker suite builds its base image with it) when missing, then start the engine
#           (systemctl on a systemd host, else dockerd in the background, logging to var/log/dockerd.log)
# On failure: one line on stderr saying why and what to do, exit status 1.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOG="$ROOT/var/log/dockerd.log"

answers() { command -v docker >/dev/null && timeout 10 docker info >/dev/null 2>&1; }
fail() { echo "docker-engine: $1" >&2; exit 1; }

case "${1:-}" in
  status) answers ;;
  start)
    answers && exit 0
    [[ -n "${DOCKER_HOST:-}" ]] && fail "no Docker engine answers at DOCKER_HOST=$DOCKER_HOST; start it there or unset DOCKER_HOST"
    [[ "$(id -u)" == 0 ]] || fail "no Docker engine answers; as root run: scripts/docker-engine.sh start (or start dockerd yourself)"
    missing=""
    command -v dockerd >/dev/null || missing="$missing docker.io"
    command -v debootstrap >/dev/null || missing="$missing debootstrap"
    if [[ -n "$missing" ]]; then
      echo "==> apt-get install$missing"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null \
        || fail "apt-get install$missing failed"
    fi
    if [[ -d /run/systemd/system ]]; then
      systemctl start docker || fail "systemctl start docker failed: see journalctl -u docker"
    else
      mkdir -p "$(dirname "$LOG")"
      setsid nohup dockerd >"$LOG" 2>&1 </dev/null &
    fi
    for _ in $(seq 1 60); do answers && exit 0; sleep 0.5; done
    fail "dockerd did not answer within 30 s (inside an unprivileged container it cannot run); last log lines: $(tail -n 3 "$LOG" 2>/dev/null | tr '\n' ' ')"
    ;;
  *) echo "usage: scripts/docker-engine.sh status|start" >&2; exit 2 ;;
esac
