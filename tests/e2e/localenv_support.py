"""The local environment under test: paths, HTTP/SQL/PromQL/supervisor helpers (shared by tests/e2e).

Not in conftest.py so test modules import it by a unique name (several conftest.py files exist).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import requests

from harness.postgres import query as harness_query
from harness.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SCRIPT = ROOT / "scripts" / "localenv.sh"


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (all sockets held open together, so no duplicates)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


@dataclass
class LocalEnv:
    var_dir: Path
    vars_file: Path
    settings: dict  # the localenv_* overrides
    state: dict  # var/localenv.env: URLs, key, DB URL…
    up_output: str

    @property
    def env(self) -> dict:
        return {**os.environ, "LOCALENV_VAR_DIR": str(self.var_dir)}

    @property
    def url(self) -> str:
        return self.state["LOCALENV_URL"]

    @property
    def cacert(self) -> str:
        return self.state["LOCALENV_CACERT"]

    @property
    def api_key(self) -> str:
        return self.state["PREDICTION_API_KEY"]

    @property
    def prometheus(self) -> str:
        return self.state["LOCALENV_PROMETHEUS_URL"]

    def session(self) -> requests.Session:
        s = requests.Session()
        # Not the environment's CA bundle or proxies (REQUESTS_CA_BUNDLE would override s.verify):
        # the environment's own self-signed certificate, straight to loopback.
        s.trust_env = False
        s.verify = self.cacert
        s.headers["X-API-Key"] = self.api_key
        return s

    def supervisorctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "supervisorctl"), "-c", self.state["LOCALENV_SUPERVISOR_CONF"], *args],
                              capture_output=True, text=True, timeout=120)

    def sql(self, query: str, params=None):
        return harness_query(self.state["LOCALENV_DB_URL"], query, params)

    def promql(self, expr: str) -> list:
        r = requests.get(f"{self.prometheus}/api/v1/query", params={"query": expr}, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", f"{expr!r}: {body}"
        return body["data"]["result"]

    def playbook(self, name: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
        env = {**self.env, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_PIPELINING": "1",
               "ANSIBLE_NOCOLOR": "1"}
        return subprocess.run([str(BIN / "ansible-playbook"), "-i", str(ROOT / "inventories" / "local"),
                               str(ROOT / "playbooks" / name), "-e", f"@{self.vars_file}", *args],
                              capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)

    def up(self, *args: str, full: bool = False) -> subprocess.CompletedProcess:
        env = {**self.env, **({"LOCALENV_FULL": "1"} if full else {})}
        return subprocess.run([str(SCRIPT), "up", "-e", f"@{self.vars_file}", *args],
                              capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)


def read_state(path: Path) -> dict:
    state = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            state[k] = v.strip('"')
    return state


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def wait_instances_ready(env: LocalEnv, timeout: float = 60) -> None:
    """Every service instance answers /ready itself (the gateway's /ready needs only one of them)."""
    base = int(env.settings["localenv_service_base_port"])
    for port in range(base, base + int(env.settings["localenv_service_instances"])):
        wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200, timeout,
                   f"the instance on port {port} to be ready")
