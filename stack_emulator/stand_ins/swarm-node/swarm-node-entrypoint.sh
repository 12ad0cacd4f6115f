#!/usr/bin/env bash
# Entrypoint of the Swarm node image: make the kernel interfaces dockerd writes to writable, then
# exec dockerd with the arguments given (the listeners; stack_emulator/swarm_nodes.py adds --group).
# The node runs without --privileged (the host engine refuses it) but with every capability but
# SYS_RESOURCE, unconfined seccomp/AppArmor/system paths and a private cgroup namespace, which lets
# it remount what Docker mounted read-only.
set -euo pipefail

mount -o remount,rw /sys
if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
  # cgroup v2 (after moby's hack/dind): move our processes out of the root group so the
  # controllers can be delegated to the groups dockerd makes for its containers.
  mount -o remount,rw /sys/fs/cgroup
  mkdir -p /sys/fs/cgroup/init
  xargs -rn1 </sys/fs/cgroup/cgroup.procs >/sys/fs/cgroup/init/cgroup.procs 2>/dev/null || :
  sed -e 's/ / +/g' -e 's/^/+/' </sys/fs/cgroup/cgroup.controllers >/sys/fs/cgroup/cgroup.subtree_control
else
  # cgroup v1: each controller is its own read-only mount under a read-only tmpfs.
  for controller in /sys/fs/cgroup/*/; do
    [[ -L "${controller%/}" ]] && continue  # cpu -> cpu,cpuacct: the same mount
    mount -o remount,bind,rw "$controller"
  done
fi

exec dockerd "$@"
