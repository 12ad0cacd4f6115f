"""The containers of a stack as `pulumi up` runs them, one part at a time (``--role``):

    pytest tests/host --hosts=docker://prediction-prod-timescaledb --role=database --inventory=inventories/prod

Expected values come from the stack file (Pulumi.<stack>.yaml, defaults as infra/config.py fills
them), the inventory's variables and the files the container itself was given (its nginx.conf,
prometheus.yml); only facts of the upstream images (users, data paths) are written here.
"""
from __future__ import annotations

import json
import re
import sys
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from host_expectations import ROOT, mount_options, processes, run_ok, tcp_listeners

sys.path.insert(0, str(ROOT / "infra"))
from database import APP_ROLE, POSTGRES_PORT  # noqa: E402
from gateway import DOCKER_DNS, HTTP_PORT, HTTPS_PORT, TLS_DIR  # noqa: E402
from monitoring import NODE_EXPORTER_PORT, PROMETHEUS_PORT, RULES_IN_CONTAINER  # noqa: E402
from ops import BACKUPS_PATH, MODELS_PATH  # noqa: E402
from service import MIGRATED_MARKER  # noqa: E402

ANY = {"0.0.0.0", "::"}


def main_process(host, pattern: str):
    """The one process whose command line matches ``pattern``."""
    found = [p for p in processes(host) if re.search(pattern, p.cmdline)]
    assert found, f"no process matches {pattern!r} in {host.backend.get_hostname()}"
    return min(found, key=lambda p: p.pid)


def user_name(host, uid: int) -> str:
    return run_ok(host, f"getent passwd {uid}").split(":")[0]


def listens_on_every_address(host, port: int) -> bool:
    return any(addr in ANY and p == port for addr, p in tcp_listeners(host))


# --- gateway: nginx, TLS termination over the replicas ------------------------------------------

@pytest.fixture(scope="module")
def nginx_conf(host) -> str:
    return host.file("/etc/nginx/nginx.conf").content_string


@pytest.mark.role("gateway")
def test_gateway_master_is_root_and_workers_are_the_configured_user(host, nginx_conf):
    user = re.search(r"^\s*user\s+(\S+?);", nginx_conf, re.M).group(1)
    master = main_process(host, r"^nginx: master process")
    workers = [p for p in processes(host) if p.cmdline.startswith("nginx: worker process")]
    assert master.uid == 0 and workers, "nginx runs without its master (root) and workers"
    assert {user_name(host, w.uid) for w in workers} == {user}, f"workers must run as {user}, the conf's user"


@pytest.mark.role("gateway")
def test_gateway_listens_on_https_and_http(host):
    for port in (HTTPS_PORT, HTTP_PORT):
        assert listens_on_every_address(host, port), f"nginx does not listen on :{port}"


@pytest.mark.role("gateway")
def test_gateway_configuration_is_valid_and_reresolves_every_replica(host, nginx_conf, stack_file):
    run_ok(host, "nginx -t")
    service = stack_file("service")
    servers = re.findall(r"^\s*server\s+(\S+):(\d+)\b([^;]*)\bresolve;", nginx_conf, re.M)
    primaries = [(name, int(port)) for name, port, params in servers if "backup" not in params]
    backups = [(name, int(port)) for name, port, params in servers if "backup" in params]
    # One name for every replica, and once more as a backup (the fallback when nginx counts all of
    # them failed); Docker's DNS answers it with every replica's address.
    assert len(primaries) == 1 and primaries[0][1] == service.port and backups == primaries, servers
    assert re.search(rf"^\s*resolver\s+{re.escape(DOCKER_DNS)}\b", nginx_conf, re.M), \
        "replicas' names must be re-resolved through Docker's DNS"
    addresses = {line.split()[0] for line in run_ok(host, f"getent ahostsv4 {primaries[0][0]}").splitlines()}
    assert len(addresses) == service.replicas, f"{primaries[0][0]} resolves to {sorted(addresses)}"


@pytest.mark.role("gateway")
def test_gateway_certificate_and_key(host, stack_file):
    key_file = host.file(f"{TLS_DIR}/server.key")
    assert key_file.user == "root" and key_file.mode == 0o600, "the TLS key must be root's, mode 0600"
    cert = x509.load_pem_x509_certificate(host.file(f"{TLS_DIR}/server.crt").content)
    key = serialization.load_pem_private_key(key_file.content, password=None)
    assert cert.public_key().public_numbers() == key.public_key().public_numbers(), "key does not match cert"
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert stack_file("gateway").serverName in names.get_values_for_type(x509.DNSName)
    # Mozilla's intermediate profile: certificates live at most 366 days.
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= timedelta(days=366)


# --- service: the prediction service replicas ------------------------------------------------------

@pytest.fixture(scope="module")
def service_process(host):
    return main_process(host, r"python -m prediction_service$")


@pytest.mark.role("service")
def test_service_is_pid_1_and_unprivileged(host, service_process):
    assert service_process.pid == 1, "the service must be PID 1, so it receives Docker's SIGTERM and drains"
    assert service_process.uid != 0, "the service must not run as root"
    assert user_name(host, service_process.uid)


@pytest.mark.role("service")
def test_service_listens_on_the_stack_files_ports(host, stack_file):
    service = stack_file("service")
    for what, port in (("HTTP", service.port), ("gRPC", service.grpcPort)):
        assert listens_on_every_address(host, port), f"the service does not listen for {what} on :{port}"


@pytest.mark.role("service")
def test_service_reads_models_from_a_read_only_mount(host, stack_file):
    path = stack_file("service").modelPath
    options = mount_options(host, path)
    assert options is not None and "ro" in options, f"{path} must be a read-only mount, found {options}"
    assert run_ok(host, f"find {path} -mindepth 3 -maxdepth 3 -name model.onnx").split(), f"no model in {path}"


@pytest.mark.role("service")
def test_service_logs_in_as_the_application_role_not_the_owner(host, expected):
    env = dict(kv.split("=", 1) for kv in host.file("/proc/1/environ").content_string.split("\0") if "=" in kv)
    url = urlsplit(env["PREDICTION_TIMESCALE_URL"])
    assert url.username == APP_ROLE and url.username != expected["prediction_db_user"]
    assert url.hostname == expected["prediction_db_host"]


# --- database: PostgreSQL 15 with TimescaleDB --------------------------------------------------------

def _psql(host, expected, sql: str) -> str:
    return run_ok(host, f"su postgres -s /bin/sh -c "
                        f"\"psql -XAtq -U {expected['prediction_db_user']} -d {expected['prediction_db_name']} -c \\\"{sql}\\\"\"").strip()


@pytest.mark.role("database")
def test_database_runs_as_postgres_and_listens(host, expected):
    postmaster = main_process(host, r"^postgres( |$)")
    assert postmaster.pid == 1 and user_name(host, postmaster.uid) == "postgres"
    assert int(expected["prediction_db_port"]) == POSTGRES_PORT
    assert listens_on_every_address(host, POSTGRES_PORT)


@pytest.mark.role("database")
def test_database_data_directory_is_private_to_postgres(host):
    data = host.file("/var/lib/postgresql/data")
    assert data.is_directory and data.user == "postgres" and data.mode == 0o700


@pytest.mark.role("database")
def test_database_preloads_the_pinned_timescaledb(host, expected, stack_file):
    assert "timescaledb" in _psql(host, expected, "SHOW shared_preload_libraries")
    pinned = stack_file("database").tag.split("-")[0]
    assert _psql(host, expected, "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'") == pinned


@pytest.mark.role("database")
def test_database_has_the_retention_job(host, expected):
    assert _psql(host, expected, "SELECT count(*) FROM timescaledb_information.jobs "
                                 "WHERE proc_name = 'policy_retention' "
                                 "AND hypertable_name = 'prediction_metrics'") == "1"


# --- cache: Redis -------------------------------------------------------------------------------------

@pytest.mark.role("cache")
def test_cache_runs_unprivileged_and_listens(host, expected):
    redis = main_process(host, r"^redis-server ")
    assert redis.pid == 1 and user_name(host, redis.uid) == "redis"
    assert listens_on_every_address(host, int(expected["redis_tuning_port"]))


@pytest.mark.role("cache")
def test_cache_has_the_stack_files_settings(host, expected):
    port = expected["redis_tuning_port"]
    config = dict(zip(*[iter(run_ok(host, f"redis-cli -p {port} CONFIG GET '*'").splitlines())] * 2))
    assert config["maxmemory-policy"] == expected["redis_tuning_maxmemory_policy"]
    assert int(config["timeout"]) == int(expected["redis_tuning_timeout"])
    assert int(config["tcp-keepalive"]) == int(expected["redis_tuning_tcp_keepalive"])
    units = {"kb": 1024, "mb": 1024 ** 2, "gb": 1024 ** 3}
    value = str(expected["redis_tuning_maxmemory"]).lower()
    number, unit = re.fullmatch(r"(\d+)([kmg]b)?", value).groups()
    assert int(config["maxmemory"]) == int(number) * units.get(unit, 1)


# --- prometheus ----------------------------------------------------------------------------------------

@pytest.mark.role("prometheus")
def test_prometheus_runs_as_nobody_and_listens(host):
    prometheus = main_process(host, r"prometheus --config\.file=")
    assert prometheus.pid == 1 and user_name(host, prometheus.uid) == "nobody"
    assert listens_on_every_address(host, PROMETHEUS_PORT)


@pytest.mark.role("prometheus")
def test_prometheus_scrapes_every_replica_with_valid_rules(host, stack_file):
    run_ok(host, "promtool check config /etc/prometheus/prometheus.yml")
    service = stack_file("service")
    # The replicas are found through Docker's DNS (one name, every replica's address): Prometheus's
    # own list of active targets has each of them.
    targets = json.loads(run_ok(host, f"wget -q -O - http://127.0.0.1:{PROMETHEUS_PORT}/api/v1/targets"))
    scraped = {t["labels"]["instance"] for t in targets["data"]["activeTargets"]
               if t["labels"]["job"] == "prediction_service"}
    assert len(scraped) == service.replicas and all(i.endswith(f":{service.port}") for i in scraped), scraped
    assert host.file(RULES_IN_CONTAINER).is_directory
    assert run_ok(host, f"ls {RULES_IN_CONTAINER}").split(), "no alert rules uploaded"


# --- node-exporter -------------------------------------------------------------------------------------

@pytest.mark.role("node-exporter")
def test_node_exporter_reads_the_host_read_only(host):
    exporter = main_process(host, r"node_exporter .*--path\.rootfs=/host")
    assert user_name(host, exporter.uid) == "nobody"
    assert listens_on_every_address(host, NODE_EXPORTER_PORT)
    options = mount_options(host, "/host")
    assert options is not None and "ro" in options, f"the host's root must be mounted read-only, found {options}"


# --- migrate: the job that migrated the database and says so ------------------------------------------

@pytest.mark.role("migrate")
def test_migrate_job_migrated_as_the_owner_and_listens_nowhere(host, expected):
    job = main_process(host, r"python -m prediction_service migrate .*--stay-up")
    assert job.pid == 1 and job.uid != 0, "the job runs unprivileged as PID 1 (it stops on Docker's SIGTERM)"
    assert host.file(MIGRATED_MARKER).exists, "the job has not marked the database migrated"
    # (Docker's embedded DNS listens on 127.0.0.11 in every container on a user-defined network.)
    listeners = {(a, p) for a, p in tcp_listeners(host) if a != "127.0.0.11"}
    assert listeners == set(), f"the migrate job must not listen on anything: {listeners}"
    env = dict(kv.split("=", 1) for kv in host.file("/proc/1/environ").content_string.split("\0") if "=" in kv)
    assert urlsplit(env["PREDICTION_TIMESCALE_URL"]).username == expected["prediction_db_user"]


# --- ops: the toolbox the playbooks run in -------------------------------------------------------------

@pytest.mark.role("ops")
def test_ops_has_the_tools_the_inventory_names(host, expected):
    for var in ("db_backup_pg_dump", "db_backup_pg_restore", "healthcheck_pg_isready"):
        assert host.file(expected[var]).is_file and host.file(expected[var]).mode & 0o111, f"{var}: {expected[var]}"
    assert host.exists("redis-cli")
    run_ok(host, f"{expected['ansible_python_interpreter']} -c 'import psycopg2, redis'")


@pytest.mark.role("ops")
def test_ops_backups_and_models_are_volumes(host, expected, stack_file):
    assert expected["db_backup_dir"] == BACKUPS_PATH
    assert mount_options(host, BACKUPS_PATH) is not None, f"{BACKUPS_PATH} is not a volume"
    # The models volume is there to publish into, unless the stack bind-mounts a host folder (dev).
    models = mount_options(host, MODELS_PATH)
    if stack_file("service").modelsHostPath is None:
        assert models is not None and "rw" in models, f"{MODELS_PATH} must be the models volume, read-write"
    else:
        assert models is None, f"{MODELS_PATH} is mounted although the stack bind-mounts its models"
