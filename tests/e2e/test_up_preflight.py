"""`make up` stops early and says why, in its last line: a port already taken (another clone's
environment, a service of the distribution moved onto our port) or a setting the service refuses
(a short PREDICTION_API_KEY) stop it before anything starts; an instance that exits while starting
stops it at once, with the instance's last log lines."""
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from localenv_support import ROOT, SCRIPT, free_ports

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def environment():
    """``environment(prefix, **localenv_vars)``: a state folder and one-instance settings on free ports,
    as tests/e2e/conftest.py makes them; whatever ran there is stopped and the folder removed afterwards."""
    made = []

    def make(prefix: str, **extra) -> tuple[Path, dict]:
        var_dir, settings = _environment(prefix, **extra)
        made.append(var_dir)
        return var_dir, settings
    yield make
    for var_dir in made:
        if (var_dir / "supervisor" / "supervisord.conf").exists():
            subprocess.run([str(SCRIPT), "down"], capture_output=True, timeout=180,
                           env={**os.environ, "LOCALENV_VAR_DIR": str(var_dir)})
        shutil.rmtree(var_dir, ignore_errors=True)


def _environment(prefix: str, **extra) -> tuple[Path, dict]:
    var_dir = Path(tempfile.mkdtemp(prefix=prefix))
    var_dir.chmod(0o755)  # PostgreSQL runs as its own OS user when the tests run as root
    names = ["https", "http", "postgres", "redis", "prometheus", "node_exporter", "postgres_exporter", "redis_exporter",
             "service_base", "service_grpc_base"]
    settings = {f"localenv_{n}_port": p for n, p in zip(names, free_ports(len(names) + 1))}
    settings.update({"localenv_service_instances": 1, **extra})
    (var_dir / "vars.json").write_text(json.dumps(settings))
    return var_dir, settings


def _up(var_dir: Path, **env) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    proc = subprocess.run([str(SCRIPT), "up", "-e", f"@{var_dir / 'vars.json'}"], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **env, "LOCALENV_VAR_DIR": str(var_dir)}, timeout=600)
    return proc, time.monotonic() - started


def test_taken_port_stops_make_up_early_with_one_line(environment):
    var_dir, settings = environment("localenv-taken-")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", settings["localenv_postgres_port"]))
        squatter.listen()
        proc, took = _up(var_dir)
    out = proc.stdout + proc.stderr
    last = [line for line in out.splitlines() if line.strip()][-2:]
    assert proc.returncode != 0, out[-3000:]
    assert last[0].startswith("make up stopped: Port ") and "localenv_postgres_port" in last[0], last
    assert str(settings["localenv_postgres_port"]) in last[0], last
    assert not (var_dir / "supervisor" / "supervisord.conf").exists(), "something was started before the check"
    # How soon is reported, not asserted: nothing started is what "early" means (and a loaded machine is slow).
    print(f"\nmake up with a taken port stopped after {took:.1f}s: {last[0]}")


def test_refused_setting_stops_make_up_before_anything_starts(environment):
    """The service's own validation (python -m prediction_service check-config), not a copy of its rules."""
    var_dir, _ = environment("localenv-refused-")
    proc, took = _up(var_dir, PREDICTION_API_KEY="too-short")
    out = proc.stdout + proc.stderr
    last = [line for line in out.splitlines() if line.strip()][-2:]
    assert proc.returncode != 0, out[-3000:]
    assert last[0] == ("make up stopped: service-1 would not start, the service refuses its settings: configuration "
                       "error: PREDICTION_API_KEY: API key must be at least 16 characters long (generate one with: "
                       "python -c 'import secrets; print(secrets.token_urlsafe(32))')"), last
    assert not (var_dir / "supervisor" / "supervisord.conf").exists(), "something was started before the check"
    print(f"\nmake up with a refused setting stopped after {took:.1f}s: {last[0]}")


def test_instance_exiting_at_start_stops_make_up_at_once_with_its_log(environment):
    """An address this machine does not have passes the settings check; binding to it fails at start-up."""
    var_dir, _ = environment("localenv-exits-", local_service_bind="192.0.2.1")
    proc, took = _up(var_dir)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    stopped = out[out.index("make up stopped: "):].splitlines()
    assert stopped[0].startswith("make up stopped: service-1 exited during start-up ("), stopped
    assert stopped[0].endswith(f"the last lines of its log ({var_dir}/supervisor/logs/service-1.log):"), stopped
    # The first socket the instance opens says so: gRPC's (the address is not this host's) or HTTP's.
    assert any("192.0.2.1" in line and ("assign requested address" in line or "address is not this host's" in line)
               for line in stopped[1:-1]), stopped
    assert stopped[-1] == f"  (full output: {var_dir}/up.log)"
    print(f"\nmake up with an instance that cannot start stopped after {took:.1f}s:\n" + "\n".join(stopped))
