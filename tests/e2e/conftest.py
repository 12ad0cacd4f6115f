"""One local environment (`scripts/localenv.sh up`, i.e. `make up`) per test session, in a temporary
state folder and on free ports, so a developer's own `make up` (var/, 8443, 9090…) is never touched.

Everything is real: supervisord, PostgreSQL, Redis, two service instances, nginx with TLS, Prometheus,
node-exporter and the PostgreSQL and Redis exporters, configured by playbooks/local.yml exactly as `make up` does.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from localenv_support import ROOT, SCRIPT, LocalEnv, free_ports, read_state


@pytest.fixture(scope="session")
def localenv() -> LocalEnv:
    if not (ROOT / "service" / "models").is_dir():
        pytest.fail("service/models is missing: run `make model` (make test does it first)")
    var_dir = Path(tempfile.mkdtemp(prefix="localenv-e2e-"))
    var_dir.chmod(0o755)  # PostgreSQL runs as its own OS user when the tests run as root
    names = ["https", "http", "postgres", "redis", "prometheus", "node_exporter", "postgres_exporter",
             "redis_exporter"]
    # Service instances take base and base+1 (REST) and grpc_base and grpc_base+1: two adjacent free
    # ports each. All of them from below the kernel's ephemeral range, so no other process is handed one
    # of them meanwhile (free_ports).
    *ports, base, grpc_base = free_ports(len(names) + 2, adjacent=2)
    settings = {f"localenv_{n}_port": p for n, p in zip(names, ports)}
    settings.update({"localenv_service_base_port": base, "localenv_service_grpc_base_port": grpc_base,
                     "localenv_service_instances": 2, "localenv_scrape_interval": "2s"})
    vars_file = var_dir / "e2e-vars.json"
    vars_file.write_text(json.dumps(settings))
    env = LocalEnv(var_dir, vars_file, settings, {}, "")
    started = time.monotonic()
    proc = env.up()
    env.up_output = proc.stdout + proc.stderr
    try:
        assert proc.returncode == 0, f"make up failed ({proc.returncode}):\n{env.up_output[-6000:]}"
        env.state = read_state(var_dir / "localenv.env")
        print(f"\nlocal environment up in {time.monotonic() - started:.0f}s at {env.url} (state {var_dir})")
        yield env
    finally:
        down = subprocess.run([str(SCRIPT), "down"], capture_output=True, text=True, env=env.env, timeout=180)
        if down.returncode != 0:
            print(f"make down failed: {down.stdout}{down.stderr}")
        if os.environ.get("LOCALENV_E2E_KEEP") != "1":
            shutil.rmtree(var_dir, ignore_errors=True)


