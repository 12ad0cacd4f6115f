"""Run real ``ansible-playbook`` against this machine (connection local) and read its recap.

Tests build an inventory whose groups (database, cache, service, gateway, monitoring, grafana)
all point at localhost, so every playbook runs for real against the throwaway servers.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
GROUPS = ("database", "cache", "service", "gateway", "monitoring", "grafana", "backup")


@dataclass
class PlaybookRun:
    rc: int
    stdout: str
    stderr: str
    stats: dict  # {"ok": n, "changed": n, "failures": n, "unreachable": n, "skipped": n, ...} for localhost

    @property
    def changed(self) -> int:
        return self.stats.get("changed", 0)

    def failure_messages(self) -> list[str]:
        """The 'msg' of every failed task, for assertions on what an operator would read."""
        try:
            doc = json.loads(self.stdout)
        except ValueError:
            return [self.stdout[-2000:]]
        msgs = []
        for play in doc.get("plays", []):
            for task in play.get("tasks", []):
                for res in task.get("hosts", {}).values():
                    if res.get("failed"):
                        msgs.append(str(res.get("msg", res)))
        return msgs


def write_inventory(path: Path, hostvars: dict | None = None) -> Path:
    """An inventory with every group on localhost (local connection, this venv's Python)."""
    host = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable, **(hostvars or {})}
    inv = {"all": {"children": {g: {"hosts": {"localhost": None}} for g in GROUPS},
                   "hosts": {"localhost": host}}}
    path.write_text(yaml.safe_dump(inv))
    return path


def run_playbook(playbook: str, inventory: Path, extra_vars: dict | None = None,
                 check: bool = False, diff: bool = False, timeout: int = 600) -> PlaybookRun:
    """``ansible-playbook playbooks/<playbook>`` with the JSON callback; returns rc and the recap."""
    cmd = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory),
           str(ROOT / "playbooks" / playbook)]
    if extra_vars:
        vars_file = inventory.parent / f"extra-vars-{os.getpid()}-{abs(hash(playbook))}.json"
        vars_file.write_text(json.dumps(extra_vars))
        cmd += ["-e", f"@{vars_file}"]
    if check:
        cmd.append("--check")
    if diff:
        cmd.append("--diff")
    env = {**os.environ, "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json", "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
           "ANSIBLE_NOCOLOR": "1", "ANSIBLE_RETRY_FILES_ENABLED": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)
    stats = {}
    try:
        stats = json.loads(proc.stdout).get("stats", {}).get("localhost", {})
    except ValueError:
        pass
    return PlaybookRun(proc.returncode, proc.stdout, proc.stderr, stats)
