#!/usr/bin/env bash
# make test's pytest: the suites on the Docker engine (tests/docker, tests/swarm) in one pytest process
# and every other suite in a second one, side by side. The Docker suites spend most of their time waiting
# on containers (health checks, roll-outs, Swarm convergence), so the two together take little more than
# the Docker suites alone. Each line is prefixed [docker] or [host]; the exit status is the worse of the two.
# TEST_PARALLEL=0 runs one pytest process over everything instead. Arguments go to both processes.
set -uo pipefail
bin="${BIN:-.venv/bin}"
if [[ "${TEST_PARALLEL:-1}" == 0 ]]; then
  exec "$bin/pytest" "$@"
fi
run() {  # name, pytest arguments...
  local name=$1; shift
  "$bin/pytest" "$@" 2>&1 | sed -u "s/^/[$name] /"
}
run docker tests/docker tests/swarm "$@" &
docker_pid=$!
run host --ignore=tests/docker --ignore=tests/swarm "$@" &
host_pid=$!
wait "$host_pid"; host_rc=$?
wait "$docker_pid"; docker_rc=$?
echo "==> pytest: host suites exit $host_rc, Docker suites exit $docker_rc"
# pytest's exit 5 (nothing collected) only when both collected nothing.
(( host_rc == 0 || host_rc == 5 )) && (( docker_rc == 0 || docker_rc == 5 )) && ! (( host_rc == 5 && docker_rc == 5 ))
