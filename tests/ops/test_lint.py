"""ansible-lint (pinned, offline, production profile from .ansible-lint) over the roles and playbooks."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
OPS_PATHS = ["roles/redis_tuning", "roles/grafana_provisioning", "roles/healthcheck", "playbooks/redis-tune.yml",
             "playbooks/grafana.yml", "playbooks/healthcheck.yml", "inventories"]


def lint(*paths: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "NO_COLOR": "1",
           "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}
    return subprocess.run([str(BIN / "ansible-lint"), "--offline", "--nocolor", *paths], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_ops_roles_playbooks_and_inventories_pass():
    proc = lint(*OPS_PATHS)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]


def test_all_roles_and_playbooks_pass():
    """`make lint`: the whole roles/ and playbooks/ trees, whoever wrote them."""
    proc = lint("roles", "playbooks")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
