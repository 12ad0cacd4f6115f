"""Static checks of the DB (and exporter) roles and inventories: argument specs in sync with defaults, role-prefixed
names, the brief's prod values, and no plain-text passwords. (ansible-lint runs in its own test.)"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLES = ("timescaledb_tuning", "timescaledb_schema", "db_backup", "db_restore", "postgres_exporter", "redis_exporter")
ENVS = ("local", "dev", "staging", "prod")


@pytest.mark.parametrize("role", ROLES)
def test_argument_specs_match_defaults(role):
    defaults = yaml.safe_load((ROOT / "roles" / role / "defaults/main.yml").read_text())
    spec = yaml.safe_load((ROOT / "roles" / role / "meta/argument_specs.yml").read_text())
    options = spec["argument_specs"]["main"]["options"]
    assert set(defaults) == set(options), (set(defaults) ^ set(options))
    for name, value in defaults.items():
        assert name.startswith(role + "_"), f"{name} is not prefixed with {role}_"
        opt = options[name]
        assert opt.get("description"), f"{name} has no description"
        assert opt.get("type"), f"{name} has no type"
        assert opt.get("default") == value or str(opt.get("default")) == str(value), \
            f"{name}: default {value!r} in defaults/main.yml, {opt.get('default')!r} in argument_specs"
    for required in ("tasks/main.yml", "tasks/preflight.yml", "meta/main.yml", "README.md"):
        assert (ROOT / "roles" / role / required).is_file(), f"roles/{role}/{required} missing"


def test_prod_carries_the_briefs_database_values():
    prod = yaml.safe_load((ROOT / "inventories/prod/group_vars/all/database.yml").read_text())
    assert prod["timescaledb_tuning_max_connections"] == "200"
    assert prod["timescaledb_tuning_shared_buffers"] == "1GB"
    assert prod["timescaledb_tuning_work_mem"] == "32MB"
    assert prod["timescaledb_tuning_maintenance_work_mem"] == "256MB"
    assert prod["db_backup_retention_days"] == 7


@pytest.mark.parametrize("env", ENVS)
def test_no_plain_text_passwords(env):
    inv = ROOT / "inventories" / env
    assert (inv / "hosts.yml").is_file()
    groups = yaml.safe_load((inv / "hosts.yml").read_text())["all"]["children"]
    for group in ("database", "backup"):
        # A group has hosts of its own (local) or is the ops container's (dev, staging, prod).
        assert groups[group].get("hosts") or groups[group].get("children"), f"{env}: group {group} has no host"
    data = yaml.safe_load((inv / "group_vars/all/database.yml").read_text())
    for key, value in data.items():
        if "password" in key:
            value = str(value)
            assert value == "" or "{{" in value, f"{env}: {key} looks like a plain-text secret"
            assert "{{" not in value or "lookup(" in value or value.strip().startswith("{{ prediction_db_password"), \
                f"{env}: {key} should come from an environment lookup or vault"
