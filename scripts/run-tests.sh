#!/usr/bin/env bash
# make test's pytest: the suites on the Docker engine (tests/docker, tests/swarm) in one pytest process
# and every other suite in a second one, side by side. The Docker suites spend most of their time waiting
# on containers (health checks, roll-outs, Swarm convergence), so the two together take little more than
# the Docker suites alone. Each line is prefixed [docker] or [host]; the exit status is the worse of the two.
# TEST_PARALLEL=0 runs one pytest process over everything instead. Arguments go to both processes.
# The process that ends first scrolls out of sight (a CI log often shows only its tail), so each one's
# output is kept in a file too, and a failed one's summary is printed again at the very end.
set -uo pipefail
bin="${BIN:-.venv/bin}"
if [[ "${TEST_PARALLEL:-1}" == 0 ]]; then
  exec "$bin/pytest" "$@"
fi
logs="$(mktemp -d "${TMPDIR:-/tmp}/prediction-platform-tests.XXXXXX")"
run() {  # name, pytest arguments...
  local name=$1; shift
  "$bin/pytest" "$@" 2>&1 | tee "$logs/$name.log" | sed -u "s/^/[$name] /"
}
failed() { (( $1 != 0 && $1 != 5 )); }  # 5: nothing collected (judged on both at the end)
again() {  # name: a failed process's error lines and its FAILED/ERROR lines (else its last lines)
  echo "==> [$1] failed (whole output: $logs/$1.log):"
  if grep -q "short test summary info" "$logs/$1.log"; then
    grep -E '^E ' "$logs/$1.log" | head -n 15
    sed -n '/short test summary info/,$p' "$logs/$1.log" | grep -E '^(FAILED|ERROR) '
  else
    tail -n 40 "$logs/$1.log"
  fi | sed "s/^/[$1] /"
}
run docker tests/docker tests/swarm "$@" &
docker_pid=$!
run host --ignore=tests/docker --ignore=tests/swarm "$@" &
host_pid=$!
wait "$host_pid"; host_rc=$?
wait "$docker_pid"; docker_rc=$?
failed "$docker_rc" && again docker
failed "$host_rc" && again host
echo "==> pytest: host suites exit $host_rc, Docker suites exit $docker_rc (output of each: $logs/)"
# pytest's exit 5 (nothing collected) only when both collected nothing.
! failed "$host_rc" && ! failed "$docker_rc" && ! (( host_rc == 5 && docker_rc == 5 ))
