"""Expected values of a host, from the Ansible inventory (shared by the tests/host modules).

Not in conftest.py so test modules import it by a unique name (several conftest.py files exist).
"""
from __future__ import annotations

import ipaddress
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The parts a stack container plays (infra/: the com.prediction.component label of each container).
CONTAINER_ROLES = ("gateway", "service", "migrate", "database", "cache", "prometheus", "node-exporter", "ops")


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
    """Run on the target; fail with the command's own output when it does not exit 0. The output is
    read as UTF-8 with undecodable bytes replaced: what a target prints (a host process's arguments,
    a file) may hold any bytes, and testinfra's own decoding would raise on them."""
    result = host.run(cmd, *args)
    out = result.stdout_bytes.decode("utf-8", "replace")
    assert result.rc == 0, \
        f"`{result.command}` exited {result.rc}:\n{out}\n{result.stderr_bytes.decode('utf-8', 'replace')}"
    return out


@dataclass(frozen=True)
class Process:
    pid: int
    uid: int
    cmdline: str


def processes(host) -> list[Process]:
    """Every process the target shows, read from /proc: containers have no ps. A container sharing
    the host's PID namespace shows processes this suite knows nothing of, whose arguments may hold
    any bytes: NULs and newlines become spaces, the rest is printed verbatim (printf, not echo, which
    would expand a backslash sequence such as ``\\0200``)."""
    out = run_ok(host, "for d in /proc/[0-9]*; do "
                       "c=$(tr '\\0\\n' '  ' < $d/cmdline 2>/dev/null) || continue; "
                       "u=$(sed -n 's/^Uid:[[:space:]]*\\([0-9]*\\).*/\\1/p' $d/status 2>/dev/null) || continue; "
                       "[ -n \"$c\" ] && printf '%s %s %s\\n' \"${d#/proc/}\" \"$u\" \"$c\"; done; true")
    found = []
    for line in out.splitlines():
        pid, uid, cmd = line.split(" ", 2)
        found.append(Process(int(pid), int(uid), cmd.strip()))
    return found


def tcp_listeners(host) -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket in the target's network namespace, from
    /proc/net/tcp{,6}: containers have no ss."""
    found = set()
    for table, family in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 6)):
        text = host.run(f"cat {table}").stdout
        for line in text.splitlines()[1:]:
            fields = line.split()
            if len(fields) < 4 or fields[3] != "0A":  # 0A: TCP_LISTEN
                continue
            addr_hex, port_hex = fields[1].split(":")
            raw = bytes.fromhex(addr_hex)
            # The kernel prints each 32-bit word in host (little-endian) order.
            words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.add((str(ipaddress.ip_address(words)) if family == 4 else str(ipaddress.IPv6Address(words)),
                       int(port_hex, 16)))
    return found


def mount_options(host, path: str) -> list[str] | None:
    """The options of the mount at ``path`` (from /proc/mounts), None when nothing is mounted there."""
    for line in host.file("/proc/mounts").content_string.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[1] == path:
            return fields[3].split(",")
    return None
