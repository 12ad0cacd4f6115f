"""The local environment under test: paths, HTTP/SQL/PromQL/supervisor helpers (shared by tests/e2e).

Not in conftest.py so test modules import it by a unique name (several conftest.py files exist).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import requests

from harness.net import free_ports, port_free  # noqa: F401 (the e2e tests import them from here)
from harness.postgres import query as harness_query
from harness.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SCRIPT = ROOT / "scripts" / "localenv.sh"


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


def listening_pids(port: int) -> set[int]:
    """The processes holding a listening TCP socket on ``port`` (ss -p)."""
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, timeout=30).stdout
    return {int(pid) for pid in re.findall(r"pid=(\d+)", out)}


def wait_instances_ready(env: LocalEnv, timeout: float = 120) -> None:
    """Every service instance, itself, listens on its port and answers /ready (the gateway's /ready needs
    only one of them; and another process answering on an instance's port is not that instance)."""
    base = int(env.settings["localenv_service_base_port"])
    for i in range(int(env.settings["localenv_service_instances"])):
        port, program = base + i, f"service-{i + 1}"

        def serving() -> bool:
            pid = int(env.supervisorctl("pid", program).stdout.strip() or 0)
            return (pid > 0 and pid in listening_pids(port)
                    and requests.get(f"http://127.0.0.1:{port}/ready", timeout=5).status_code == 200)
        wait_until(serving, timeout, f"{program} itself to listen on port {port} and be ready")
