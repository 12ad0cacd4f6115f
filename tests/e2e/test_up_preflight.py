"""`make up` on a machine where a port is already taken (another clone's environment, a service of the
distribution moved onto our port): it stops within seconds, before starting anything, with one line
that names the port and the variable that moves it."""
import json
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from localenv_support import ROOT, SCRIPT, free_ports

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_taken_port_stops_make_up_early_with_one_line():
    var_dir = Path(tempfile.mkdtemp(prefix="localenv-taken-"))
    names = ["https", "http", "postgres", "redis", "prometheus", "node_exporter", "postgres_exporter", "redis_exporter",
             "service_base"]
    settings = {f"localenv_{n}_port": p for n, p in zip(names, free_ports(len(names) + 1))}
    settings["localenv_service_instances"] = 1
    (var_dir / "vars.json").write_text(json.dumps(settings))
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", settings["localenv_postgres_port"]))
        squatter.listen()
        started = time.monotonic()
        proc = subprocess.run([str(SCRIPT), "up", "-e", f"@{var_dir / 'vars.json'}"], capture_output=True, text=True,
                              cwd=ROOT, env={**os.environ, "LOCALENV_VAR_DIR": str(var_dir)}, timeout=300)
        took = time.monotonic() - started
    out = proc.stdout + proc.stderr
    last = [line for line in out.splitlines() if line.strip()][-2:]
    assert proc.returncode != 0, out[-3000:]
    assert last[0].startswith("make up stopped: Port ") and "localenv_postgres_port" in last[0], last
    assert str(settings["localenv_postgres_port"]) in last[0], last
    assert not (var_dir / "supervisor" / "supervisord.conf").exists(), "something was started before the check"
    print(f"\nmake up with a taken port stopped after {took:.1f}s: {last[0]}")
    assert took < 60, f"took {took:.0f}s to say a port is taken"
