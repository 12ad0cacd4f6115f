#!/usr/bin/env bash
# `make pristine-check`: the README's two commands as a new user runs them, on a pristine Debian 12.
#
#   1. A minimal Debian 12 (debootstrap --variant=minbase bookworm, plus git, make and python3: what the
#      README assumes) imported into the Docker engine as a local test image, $PRISTINE_IMAGE. Built
#      once and reused; PRISTINE_REBUILD=1 builds it again (e.g. after a Debian point release).
#   2. A container of it, as root, with this repository's committed HEAD cloned under /root (a folder
#      other users cannot enter, the case that broke PostgreSQL before): `make test`, then the
#      distribution's PostgreSQL, Redis, nginx, Prometheus and node-exporter started on their default
#      ports (what systemd does when the packages are installed), then `make up` and one prediction
#      through the gateway.
#   3. One line with the time of each command; exit status non-zero when any step failed.
#
# Needs root and a Docker engine. By default the container has no Docker engine of its own, as in most
# containers and CI runners, so the Docker suite prints its one skip line there. PRISTINE_DOCKER=1 gives
# the container what an engine inside it needs, and `make test` starts one there (scripts/docker-engine.sh:
# docker.io from Debian, dockerd in the background), so the Docker suite runs too. The host's CA bundle is
# mounted and named in PIP_CERT so pip trusts whatever TLS inspection sits between the container and the
# package index (harmless elsewhere).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGE="${PRISTINE_IMAGE:-localtest/prediction-platform-pristine:debian12}"
MIRROR="${PRISTINE_MIRROR:-http://deb.debian.org/debian}"
NAME="pristine-check-$$"  # not prediction-*: the Docker suites clean those up
HOST_CA=/etc/ssl/certs/ca-certificates.crt

fail() { echo "pristine-check: $*" >&2; exit 1; }
[[ "$(id -u)" == 0 ]] || fail "run it as root (debootstrap and the Docker engine need root)"
docker info >/dev/null 2>&1 || fail "no Docker engine answers: install docker.io and start dockerd"

build_image() {
  command -v debootstrap >/dev/null || fail "debootstrap is missing: apt-get install debootstrap"
  local rootfs
  rootfs="$(mktemp -d /var/tmp/pristine-rootfs.XXXXXX)"
  echo "==> debootstrap --variant=minbase bookworm (+ git make python3) into $rootfs"
  debootstrap --variant=minbase --include=git,make,python3 bookworm "$rootfs" "$MIRROR" >"$rootfs.log" 2>&1 \
    || { tail -20 "$rootfs.log"; rm -rf "$rootfs"; fail "debootstrap failed (log above)"; }
  echo "==> docker import as $IMAGE"
  tar -C "$rootfs" -c . | docker import \
    --change 'LABEL com.prediction.local-test-image="pristine Debian 12 minbase for make pristine-check; not for deployment"' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$IMAGE" >/dev/null
  rm -rf "$rootfs" "$rootfs.log"
}

if [[ "${PRISTINE_REBUILD:-0}" == 1 ]] || ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
  build_image
fi

# What an engine inside needs, without --privileged (which this kind of host's engine may refuse): every
# capability but SYS_RESOURCE, no seccomp/AppArmor confinement and no masked /proc, /sys paths, every
# device, its own cgroup namespace, /sys and the cgroup hierarchies writable (remounted inside, below),
# and /var/lib/docker on a volume: overlay2 cannot stack on the container's own overlay root.
engine_args=()
if [[ "${PRISTINE_DOCKER:-0}" == 1 ]]; then
  engine_args=(--cap-add ALL --cap-drop SYS_RESOURCE --security-opt seccomp=unconfined
               --security-opt systempaths=unconfined --security-opt apparmor=unconfined
               --device-cgroup-rule 'a *:* rwm' --cgroupns private --mount type=volume,dst=/var/lib/docker
               -e PRISTINE_DOCKER=1)
fi

work="$(mktemp -d)"
cleanup() { docker rm -f -v "$NAME" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
git -C "$ROOT" bundle create -q "$work/repo.bundle" HEAD
echo "==> $IMAGE: clone of $(git -C "$ROOT" rev-parse --short HEAD) under /root, then make test; make up" \
  "($([[ "${PRISTINE_DOCKER:-0}" == 1 ]] && echo "a Docker engine inside: the Docker suite runs" \
      || echo "no Docker engine inside: the Docker suite skips"))"

ca_args=()
[[ -f "$HOST_CA" ]] && ca_args=(-v "$HOST_CA:/etc/ssl/host-ca-bundle.crt:ro" -e PIP_CERT=/etc/ssl/host-ca-bundle.crt)

# Inside: exactly the README's steps, timed. Distribution services start between the two commands.
# SYS_PTRACE: root on a real machine reads every process's /proc/<pid>/fd (ss -p, used by the testinfra
# suite, names the postgres-owned listener that way); Docker drops that capability by default.
docker run --name "$NAME" --label com.prediction.pristine-check=1 --cap-add SYS_PTRACE "${engine_args[@]}" \
  "${ca_args[@]}" -v "$work/repo.bundle:/tmp/repo.bundle:ro" "$IMAGE" bash -c '
set -uo pipefail
if [ "${PRISTINE_DOCKER:-0}" = 1 ]; then
  # Docker mounts them read-only; dockerd writes cgroups (what --privileged would have left writable).
  mount -o remount,rw /sys || exit 1
  for d in /sys/fs/cgroup /sys/fs/cgroup/*; do mount -o remount,bind,rw "$d" || exit 1; done
fi
git -c advice.detachedHead=false clone -q /tmp/repo.bundle /root/prediction-platform && cd /root/prediction-platform || exit 1
start=$SECONDS; make test; test_rc=$?; test_s=$((SECONDS - start))
echo "==> the distribution services on their default ports, as systemd starts them on install"
for s in postgresql redis-server nginx prometheus prometheus-node-exporter prometheus-postgres-exporter \
         prometheus-redis-exporter; do
  [ -x /etc/init.d/$s ] && /etc/init.d/$s start >/dev/null 2>&1 || echo "   (could not start $s)"
done
start=$SECONDS; make up; up_rc=$?; up_s=$((SECONDS - start))
predict=failed
if [ $up_rc = 0 ]; then
  set -a; . var/localenv.env; set +a
  curl -sf --cacert "$LOCALENV_CACERT" -H "X-API-Key: $PREDICTION_API_KEY" -H "Content-Type: application/json" \
    -d "{\"sepal_length\":5.1,\"sepal_width\":3.5,\"petal_length\":1.4,\"petal_width\":0.2}" \
    "$LOCALENV_URL/api/v1/models/iris/predict" && predict=ok && echo
fi
engine="no Docker engine inside"
[ "${PRISTINE_DOCKER:-0}" = 1 ] && engine="Docker engine inside: $(docker version -f "{{.Server.Version}}" 2>/dev/null || echo "did not answer")"
echo "pristine-check ($engine): make test ${test_s} s (exit $test_rc), make up ${up_s} s (exit $up_rc), prediction $predict"
[ $test_rc = 0 ] && [ $up_rc = 0 ] && [ $predict = ok ]
'
