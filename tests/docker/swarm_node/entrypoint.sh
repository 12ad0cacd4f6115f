#!/usr/bin/env bash
# Make the kernel interfaces dockerd writes to writable, then exec dockerd with the given arguments.
# The node runs without --privileged (the host engine refuses it) but with every capability but
# SYS_RESOURCE, unconfined seccomp/AppArmor/system paths and a private cgroup namespace, which
# allows remounting what Docker mounted read-only.
set -euo pipefail
mount -o remount,rw /sys
if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
  # cgroup v2 (as moby's hack/dind): leave the root group so controllers can be delegated.
  mount -o remount,rw /sys/fs/cgroup
  mkdir -p /sys/fs/cgroup/init
  xargs -rn1 </sys/fs/cgroup/cgroup.procs >/sys/fs/cgroup/init/cgroup.procs 2>/dev/null || :
  sed -e 's/ / +/g' -e 's/^/+/' </sys/fs/cgroup/cgroup.controllers >/sys/fs/cgroup/cgroup.subtree_control
else
  # cgroup v1: each controller is a read-only bind mount of its own.
  for controller in /sys/fs/cgroup/*/; do
    [[ -L "${controller%/}" ]] && continue
    mount -o remount,bind,rw "$controller"
  done
fi
exec dockerd "$@"
