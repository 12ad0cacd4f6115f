"""The Docker environments' inventories take their sizes from the stack files Pulumi deploys.

One source of truth: Redis's maxmemory/policy/timeout/keepalive and the database container's memory
limit (which timescaledb_tuning sizes PostgreSQL from) are written once, in Pulumi.<stack>.yaml.
These tests resolve the inventories with Ansible's own API and compare them with the Pulumi
program's effective configuration (stack values over infra/config.py's defaults).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
STACKS = ("dev", "staging", "prod")


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


ExpectedVars = _load("host_expectations", ROOT / "tests/host/host_expectations.py").ExpectedVars
infra_config = _load("infra_config_for_inventory_tests", ROOT / "infra/config.py")


def stack_section(stack: str, section: str) -> dict:
    config = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]
    return config.get(f"prediction-platform:{section}", {})


def inventory_vars(stack: str, monkeypatch) -> ExpectedVars:
    monkeypatch.setenv("PREDICTION_DB_PASSWORD", "not-a-real-password")  # the inventories require it
    return ExpectedVars(str(ROOT / "inventories" / stack), None, [])


@pytest.mark.parametrize("stack", STACKS)
def test_redis_settings_are_the_stack_files(stack, monkeypatch):
    cache = infra_config.CacheConfig(**stack_section(stack, "cache"))
    inv = inventory_vars(stack, monkeypatch)
    assert str(inv["redis_tuning_maxmemory"]).lower() == cache.maxmemory.lower()
    assert inv["redis_tuning_maxmemory_policy"] == cache.maxmemoryPolicy
    assert int(inv["redis_tuning_timeout"]) == cache.timeout
    assert int(inv["redis_tuning_tcp_keepalive"]) == cache.tcpKeepalive


@pytest.mark.parametrize("stack", ("staging", "prod"))
def test_database_is_sized_from_the_stack_files_memory_limit(stack, monkeypatch):
    database = infra_config.DatabaseConfig(**stack_section(stack, "database"))
    assert database.memoryMb, f"Pulumi.{stack}.yaml sets no database.memoryMb"
    inv = inventory_vars(stack, monkeypatch)
    assert int(inv["timescaledb_tuning_memory_limit_mb"]) == database.memoryMb


def test_prod_redis_has_the_briefs_values(monkeypatch):
    inv = inventory_vars("prod", monkeypatch)
    assert (str(inv["redis_tuning_maxmemory"]), inv["redis_tuning_maxmemory_policy"],
            int(inv["redis_tuning_timeout"]), int(inv["redis_tuning_tcp_keepalive"])) == ("2gb", "allkeys-lru", 300, 60)
