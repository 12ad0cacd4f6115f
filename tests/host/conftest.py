"""testinfra suite for a deployed prediction-service host — any kind of host.

    pytest tests/host --hosts=local://                                  # this machine (make up)
    pytest tests/host --hosts=ssh://deploy@prod-1 --inventory=inventories/prod
    pytest tests/host --hosts=docker://prediction-prod-gateway --role=gateway --inventory=inventories/prod

A stack container (what `pulumi up` runs) is checked with ``--role``: the part it plays (its
``com.prediction.component`` label); only that part's checks are collected, the others are deselected.

Expected values (ports, programs, PostgreSQL/Redis settings, backup folder…) are never written in
the tests: they come from the Ansible inventory's variables for the host under test, templated the
way ansible-playbook would (role defaults and internal role vars included, then group/host vars,
then ``--extra-vars`` files). Commands run *on the target* through testinfra's ``host`` fixture, so
the same checks work over local://, ssh:// and docker://.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from host_expectations import CONTAINER_ROLES, ROOT, ExpectedVars


def pytest_configure(config):
    config.addinivalue_line("markers", "role(name): checks of a stack container playing this part (--role)")


def pytest_collection_modifyitems(config, items):
    """With --role, keep that part's checks; without, keep the whole-host checks (no role marker)."""
    role = config.getoption("--role")
    keep, drop = [], []
    for item in items:
        roles = {m.args[0] for m in item.iter_markers("role")}
        (keep if (role in roles if role else not roles) else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_addoption(parser):
    group = parser.getgroup("host verification")
    group.addoption("--inventory", default=str(ROOT / "inventories" / "local"),
                    help="Ansible inventory holding the expected values [inventories/local]")
    group.addoption("--inventory-host", default=None,
                    help="inventory host whose variables describe the target [first host of the inventory]")
    group.addoption("--extra-vars", action="append", default=[],
                    help="YAML/JSON file of extra vars, as ansible-playbook -e @file (repeatable)")
    group.addoption("--role", choices=CONTAINER_ROLES, default=None,
                    help="the target is a stack container playing this part (its com.prediction.component "
                         "label): run that part's checks only [unset: a whole host, e.g. make up's]")
    group.addoption("--backup-max-age-hours", type=float, default=26.0,
                    help="newest verified dump must be younger than this [26]")


@pytest.fixture(scope="session")
def expected(pytestconfig) -> ExpectedVars:
    return ExpectedVars(pytestconfig.getoption("--inventory"), pytestconfig.getoption("--inventory-host"),
                        pytestconfig.getoption("--extra-vars"))


@pytest.fixture(scope="session")
def localenv(expected) -> dict:
    """The local-environment layout (supervisor, ports) when the inventory describes one, else skip."""
    if "localenv_var_dir" not in expected:
        pytest.skip("the inventory has no localenv_* variables (not a supervisor-managed host)")
    n = int(expected["localenv_service_instances"])
    base = int(expected["localenv_service_base_port"])
    grpc_base = int(expected["localenv_service_grpc_base_port"])
    var = expected["localenv_var_dir"]
    return {
        "var_dir": var,
        "supervisorctl": f"{Path(sys.executable).parent}/supervisorctl -c {var}/supervisor/supervisord.conf",
        "service_ports": [base + i for i in range(n)],
        "service_grpc_ports": [grpc_base + i for i in range(n)] if grpc_base else [],
        "programs": ["postgres", "redis", "nginx", "prometheus", "node-exporter"] + [f"service-{i + 1}" for i in range(n)],
        "hostname": expected["localenv_hostname"],
        "https_port": int(expected["localenv_https_port"]),
        "http_port": int(expected["localenv_http_port"]),
        "postgres_port": int(expected["localenv_postgres_port"]),
        "redis_port": int(expected["localenv_redis_port"]),
        "prometheus_port": int(expected["localenv_prometheus_port"]),
        "node_exporter_port": int(expected["localenv_node_exporter_port"]),
        "nginx_dir": f"{var}/nginx",
        "tls_dir": f"{var}/tls",
    }


@pytest.fixture(scope="session")
def stack(pytestconfig) -> str:
    """The Pulumi stack the inventory describes (inventories/<stack> next to Pulumi.<stack>.yaml)."""
    name = Path(pytestconfig.getoption("--inventory")).resolve().name
    if not (ROOT / f"Pulumi.{name}.yaml").is_file():
        raise pytest.UsageError(f"--role needs a stack inventory (inventories/<stack>), not {name}")
    return name


@pytest.fixture(scope="session")
def stack_file(stack):
    """``stack_file("service").port``: the stack file's section, defaults filled as `pulumi up` does."""
    sys.path.insert(0, str(ROOT / "infra"))
    from config import stack_file_section

    return lambda key: stack_file_section(stack, key)
