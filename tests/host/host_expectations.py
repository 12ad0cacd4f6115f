"""Expected values of a host, from the Ansible inventory (shared by the tests/host modules).

Not in conftest.py so test modules import it by a unique name (several conftest.py files exist).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


class ExpectedVars:
    """The inventory's variables for one host, templated on access (``expected["redis_tuning_port"]``)."""

    # Roles whose defaults/internal vars the checks read (lowest precedence, as in a play).
    ROLES = ("timescaledb_tuning", "redis_tuning", "local_supervisor", "nginx_gateway", "prometheus_server",
             "db_backup", "grafana_provisioning")

    def __init__(self, inventory: str, host_name: str | None, extra_files: list[str]):
        from ansible.inventory.manager import InventoryManager
        from ansible.parsing.dataloader import DataLoader
        from ansible.plugins.loader import init_plugin_loader
        from ansible.template import Templar
        from ansible.vars.manager import VariableManager

        init_plugin_loader()
        loader = DataLoader()
        inv = InventoryManager(loader=loader, sources=[inventory])
        hosts = inv.get_hosts()
        if not hosts:
            raise pytest.UsageError(f"inventory {inventory} has no hosts")
        host = inv.get_host(host_name) if host_name else hosts[0]
        if host is None:
            raise pytest.UsageError(f"host {host_name!r} is not in inventory {inventory}")
        self.host_name = host.name
        self.groups = {g.name for g in host.get_groups()}
        role_vars: dict = {}
        for role in self.ROLES:
            for part in ("defaults", "vars"):
                f = ROOT / "roles" / role / part / "main.yml"
                if f.is_file():
                    # Ansible's loader marks the file's strings as trusted templates (plain YAML would not be).
                    role_vars.update(loader.load_from_file(str(f), trusted_as_template=True) or {})
        extra: dict = {"playbook_dir": str(ROOT / "playbooks"), "ansible_playbook_python": sys.executable,
                       "role_path": str(ROOT / "roles" / "x")}
        for f in extra_files:
            extra.update(loader.load_from_file(str(Path(f).resolve()), trusted_as_template=True) or {})
        vm = VariableManager(loader=loader, inventory=inv)
        inventory_vars = vm.get_vars(host=host)
        self._raw = {**role_vars, **inventory_vars, **extra}
        self._templar = Templar(loader=loader, variables=self._raw)

    def __contains__(self, name: str) -> bool:
        return name in self._raw

    def __getitem__(self, name: str):
        if name not in self._raw:
            raise KeyError(f"inventory variable {name!r} is not defined for {self.host_name}")
        return self.template(self._raw[name])

    def get(self, name: str, default=None):
        return self[name] if name in self._raw else default

    def template(self, value):
        return _plain(self._templar.template(value))


def _plain(value):
    """Ansible 2.19 returns tagged str/dict/list subclasses; JSON round-trip gives plain Python types."""
    return json.loads(json.dumps(value, default=str))


def run_ok(host, cmd: str, *args) -> str:
    """Run on the target; fail with the command's own output when it does not exit 0."""
    result = host.run(cmd, *args)
    assert result.rc == 0, f"`{result.command}` exited {result.rc}:\n{result.stdout}\n{result.stderr}"
    return result.stdout
