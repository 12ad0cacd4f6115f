#!/usr/bin/env bash
# The local environment's three verbs, called by `make up|down|status`:
#   up      run playbooks/local.yml (idempotent), then print the URL and a ready-to-paste curl
#   down    stop every supervised process and supervisord itself (data is kept under the var dir)
#   status  each process with its state, and the URLs
# LOCALENV_VAR_DIR selects another state folder (default: <project>/var); extra arguments after
# `up` go to ansible-playbook (e.g. -e localenv_service_instances=3, --check --diff).
# A repeated `up` whose inputs (playbooks, roles, local inventory, dashboards, PREDICTION_* variables,
# arguments) are unchanged while every program runs skips the playbook and only prints; set
# LOCALENV_FULL=1 to run the playbook anyway (e.g. to repair settings changed by hand).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/.venv/bin"
# Resolved: var may be a symlink (see keep_state_reachable).
VAR_DIR="${LOCALENV_VAR_DIR:-$(readlink -f "$ROOT/var")}"
CONF="$VAR_DIR/supervisor/supervisord.conf"
STATE="$VAR_DIR/localenv.env"

supervisorctl() { "$BIN/supervisorctl" -c "$CONF" "$@"; }

# Whether users other than the owner may traverse every folder down to $1.
others_can_enter() {
  local dir="$1"
  while [[ "$dir" != / ]]; do
    (( 8#$(stat -c %a "$dir") & 1 )) || return 1
    dir="$(dirname "$dir")"
  done
}

# As root, PostgreSQL runs as the postgres user and nginx's workers as www-data: both must reach the
# state folder. A clone inside a folder others cannot enter (/root, a mktemp -d) keeps its state in
# /var/lib/prediction-platform/<clone>-<hash> (0755; secrets and keys inside stay 0600), and var is a
# symlink to it, so the state stays where the README says and no folder's permissions are loosened.
keep_state_reachable() {
  [[ -z "${LOCALENV_VAR_DIR:-}" && "$(id -u)" == 0 && ! -L "$ROOT/var" ]] || return 0
  others_can_enter "$ROOT" && return 0
  local outside
  outside="/var/lib/prediction-platform/$(basename "$ROOT")-$(printf %s "$ROOT" | sha256sum | cut -c1-8)"
  mkdir -p -m 0755 /var/lib/prediction-platform
  if [[ -d "$ROOT/var" ]]; then
    [[ -e "$outside" ]] && { echo "make up: both $ROOT/var and $outside exist: keep one (move it to $outside) and run make up again"; exit 1; }
    mv "$ROOT/var" "$outside"  # the state of an earlier attempt
  else
    mkdir -p -m 0755 "$outside"
  fi
  chmod 0755 "$outside"
  ln -s "$outside" "$ROOT/var"
  echo "==> the postgres user cannot enter $ROOT: state in $outside (var is a symlink to it)"
  VAR_DIR="$outside" CONF="$outside/supervisor/supervisord.conf" STATE="$outside/localenv.env"
}

# The message of the playbook's last failed task, as written (several lines when it quotes a log).
failure_message() {
  "$BIN/python" - "$1" <<'EOF'
import json, re, sys
msg = "see the output above"
for line in open(sys.argv[1], encoding="utf-8", errors="replace"):
    found = re.match(r"(?:fatal|failed): \[[^]]*\].*? => (\{.*\})\s*$", line)
    if found:
        try:
            msg = json.loads(found.group(1)).get("msg", msg)
        except ValueError:
            pass
print(msg)
EOF
}

running() { [[ -f "$CONF" ]] && supervisorctl pid >/dev/null 2>&1 && [[ "$(supervisorctl pid)" =~ ^[0-9]+$ ]]; }

# Everything the playbook's result depends on, hashed; stored after a successful run.
fingerprint() {
  {
    (cd "$ROOT" && find playbooks roles inventories/local dashboards scripts/localenv.sh -type f -print0 \
      | sort -z | xargs -0 sha256sum)
    env | grep -E '^(PREDICTION_|LOCALENV_VAR_DIR=)' | sort
    printf '%s\n' "$VAR_DIR" "$@"
  } | sha256sum | cut -d' ' -f1
}

# After `make down` with nothing changed: start supervisord, which starts every program in priority
# order (data layer first), and wait until all run and the gateway is ready. Non-zero = do the full run.
restart_unchanged() {
  echo "==> starting supervisord from $CONF"
  "$BIN/supervisord" -c "$CONF" || return 1
  # shellcheck disable=SC1090
  source "$STATE"
  for _ in $(seq 1 180); do
    # Every program past its startsecs (RUNNING, not STARTING) and the gateway answering /ready.
    if [[ "$(supervisorctl status 2>/dev/null | grep -vc ' RUNNING ' || true)" == 0 ]] \
       && [[ "$(curl -s -o /dev/null -w '%{http_code}' --cacert "$LOCALENV_CACERT" "$LOCALENV_URL/ready")" == 200 ]]; then
      return 0
    fi
    sleep 0.5
  done
  echo "==> not ready after 90 s; stopping it and running the playbook (see $VAR_DIR/supervisor/logs)"
  supervisorctl shutdown >/dev/null 2>&1 || true
  for _ in $(seq 1 120); do [[ -f "$VAR_DIR/supervisor/supervisord.pid" ]] || break; sleep 0.5; done
  return 1
}

print_urls() {
  # shellcheck disable=SC1090
  source "$STATE"
  echo "  gateway     $LOCALENV_URL  (self-signed certificate: $LOCALENV_CACERT)"
  echo "  http        $LOCALENV_HTTP_URL  (redirects to HTTPS)"
  echo "  instances   $LOCALENV_SERVICE_URLS"
  echo "  gRPC        ${LOCALENV_URL#https://} (TLS, through the gateway); instances $LOCALENV_SERVICE_GRPC_ADDRESSES"
  echo "  prometheus  $LOCALENV_PROMETHEUS_URL"
  echo "  node        $LOCALENV_NODE_EXPORTER_URL/metrics"
  echo "  exporters   $LOCALENV_POSTGRES_EXPORTER_URL/metrics (PostgreSQL)  $LOCALENV_REDIS_EXPORTER_URL/metrics (Redis)"
  echo "  postgres    ${LOCALENV_DB_URL%%:*}://…@${LOCALENV_DB_URL##*@}  (password in $VAR_DIR/secrets.env unless PREDICTION_DB_PASSWORD is set)"
  # As the service reports it: timescaledb (hypertables) or partitions (PostgreSQL without TimescaleDB).
  local storage
  storage="$(curl -s --max-time 3 "${LOCALENV_SERVICE_URLS%% *}/ready" | sed -n 's/.*"storage": *"\([a-z]*\)".*/\1/p' || true)"
  echo "  storage     ${storage:-unknown (the first instance did not answer /ready)}"
  echo "  redis       $LOCALENV_REDIS_URL"
  echo "  grafana     provisioning files in $VAR_DIR/grafana (Grafana itself is not installed here)"
}

case "${1:-}" in
  up)
    shift
    keep_state_reachable
    want="$(fingerprint "$@")"
    if [[ "${LOCALENV_FULL:-0}" != 1 && -f "$STATE" && "$(cat "$VAR_DIR/.up-fingerprint" 2>/dev/null)" == "$want" ]] \
       && running && supervisorctl status >/dev/null 2>&1; then
      echo "==> already up and nothing changed since the last make up (LOCALENV_FULL=1 make up re-applies everything)"
    elif [[ "${LOCALENV_FULL:-0}" != 1 && -f "$STATE" && "$(cat "$VAR_DIR/.up-fingerprint" 2>/dev/null)" == "$want" ]] \
       && ! running && restart_unchanged; then
      echo "==> restarted after make down; nothing changed since the last make up (data kept)"
    else
      rm -f "$VAR_DIR/.up-fingerprint"
      echo "==> ansible-playbook -i inventories/local playbooks/local.yml  (state in $VAR_DIR)"
      cd "$ROOT"
      mkdir -p "$VAR_DIR"
      LOCALENV_VAR_DIR="$VAR_DIR" ANSIBLE_PIPELINING=1 ANSIBLE_CONFIG="$ROOT/ansible.cfg" ANSIBLE_DISPLAY_SKIPPED_HOSTS=0 \
        ANSIBLE_DISPLAY_OK_HOSTS="${ANSIBLE_DISPLAY_OK_HOSTS:-0}" ANSIBLE_NOCOLOR=1 \
        "$BIN/ansible-playbook" -i inventories/local playbooks/local.yml "$@" 2>&1 | tee "$VAR_DIR/up.log" \
        || { echo "make up stopped: $(failure_message "$VAR_DIR/up.log")"; \
             echo "  (full output: $VAR_DIR/up.log)"; exit 1; }
      case " $* " in *" --check "*|*" -C "*) ;; *) echo "$want" > "$VAR_DIR/.up-fingerprint" ;; esac
    fi
    # shellcheck disable=SC1090
    source "$STATE"
    echo
    echo "The platform is up:"
    print_urls
    echo
    echo "Try it:"
    echo "  curl --cacert $LOCALENV_CACERT -H 'X-API-Key: $PREDICTION_API_KEY' -H 'Content-Type: application/json' \\"
    echo "    -d '{\"sepal_length\": 5.1, \"sepal_width\": 3.5, \"petal_length\": 1.4, \"petal_width\": 0.2}' \\"
    echo "    $LOCALENV_URL/api/v1/models/iris/predict"
    echo "  (or -k instead of --cacert; make status shows each process; make down stops everything, data kept)"
    ;;
  down)
    if running; then
      echo "==> stopping every process of $VAR_DIR (supervisorctl shutdown; data kept)"
      supervisorctl shutdown >/dev/null
      pid_file="$VAR_DIR/supervisor/supervisord.pid"
      for _ in $(seq 1 120); do [[ -f "$pid_file" ]] || break; sleep 0.5; done
      [[ -f "$pid_file" ]] && { echo "supervisord ($(cat "$pid_file")) still running after 60 s: see $VAR_DIR/supervisor/logs"; exit 1; }
      echo "stopped"
    else
      echo "nothing running for $VAR_DIR"
    fi
    ;;
  status)
    if running; then
      supervisorctl status || true
      echo
      print_urls
    else
      echo "not running (state folder $VAR_DIR); start with: make up"
      exit 3
    fi
    ;;
  *)
    echo "usage: $0 up|down|status" >&2
    exit 2
    ;;
esac
