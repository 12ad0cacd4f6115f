"""The ops playbooks against the dev and prod stacks as Pulumi runs them — the data layer unpublished,
reached through the stack's ops container — the way an operator runs them after `make stack-up`
(`ansible-playbook -i inventories/<stack> playbooks/<task>.yml` with var/stack-<stack>.env exported):
each does its job, a second run changes nothing, --check changes nothing, and bad input stops in the
first task with what to set."""
import os
import time

import pytest

from harness.waiting import wait_until
from docker_support import IRIS

pytestmark = pytest.mark.slow


def show(stack, setting: str) -> str:
    return stack.scalar(f"SHOW {setting}")


def counts(stack) -> dict[str, int]:
    return {t: int(stack.scalar(f"SELECT count(*) FROM {t}")) for t in ("predictions", "prediction_metrics",
                                                                         "schema_migrations")}


def versions(stack) -> list[int]:
    return [int(r[0]) for r in stack.sql("SELECT version FROM schema_migrations ORDER BY version")]


def traffic(stack, n: int = 20) -> None:
    """n distinct predictions (n rows), then wait until the writers have flushed them."""
    before = int(stack.scalar("SELECT count(*) FROM predictions"))
    for i in range(n):
        assert stack.predict({**IRIS, "petal_length": round(1.0 + (time.time_ns() % 10_000) / 10_000 + i / 1000, 4)}
                             ).status_code == 200
    wait_until(lambda: int(stack.scalar("SELECT count(*) FROM predictions")) >= before + n, 30, "rows flushed")


@pytest.mark.parametrize("stack_name", ["dev", "prod"])
def test_site_applies_then_a_second_run_and_check_mode_change_nothing(stacks, stack_name):
    stack = stacks(stack_name)
    # Grafana is the one container not run on this engine (no package): its play is skipped by tag.
    first = stack.playbook("site.yml", "--skip-tags", "grafana").ok()
    second = stack.playbook("site.yml", "--skip-tags", "grafana").ok()
    check = stack.playbook("site.yml", "--skip-tags", "grafana", "--check").ok()
    print(f"\n[ops] {stack_name} site.yml: first run changed={first.changed}, second changed={second.changed}, "
          f"--check changed={check.changed}")
    assert second.changed == 0 and check.changed == 0


def test_db_tune_applies_the_briefs_values_sized_from_the_containers_memory_limit(prod):
    limit_mb = prod.container("database-container").attrs["HostConfig"]["Memory"] // 2**20
    assert limit_mb == 4096  # database.memoryMb of Pulumi.prod.yaml, set on the container
    prod.sql("ALTER SYSTEM SET work_mem = '4MB'")
    prod.sql("SELECT pg_reload_conf()")
    preview = prod.playbook("db-tune.yml", "--check", "--diff").ok()
    assert preview.changed > 0 and show(prod, "work_mem") == "4MB", "--check changed the setting"
    prod.playbook("db-tune.yml").ok()
    # The brief's production values; the rest sized from the container's 4096 MB limit.
    assert {s: show(prod, s) for s in ("max_connections", "shared_buffers", "work_mem", "maintenance_work_mem",
                                       "effective_cache_size")} == {
        "max_connections": "200", "shared_buffers": "1GB", "work_mem": "32MB", "maintenance_work_mem": "256MB",
        "effective_cache_size": f"{limit_mb * 3 // 4 // 1024}GB"}
    assert prod.playbook("db-tune.yml").ok().changed == 0


def test_migrations_go_down_and_up_on_the_hypertables(prod):
    traffic(prod)
    before = counts(prod)
    latest = versions(prod)
    assert latest[-1] >= 5
    prod.playbook("db-rollback.yml", "-e", "timescaledb_schema_target_version=3").ok()
    assert versions(prod) == [1, 2, 3]
    hypertables = {r[0] for r in prod.sql("SELECT hypertable_name FROM timescaledb_information.hypertables")}
    assert hypertables == {"predictions", "prediction_metrics"}
    assert counts(prod)["predictions"] == before["predictions"]
    prod.playbook("db-migrate.yml").ok()
    assert versions(prod) == latest
    assert prod.scalar("SELECT count(*) FROM timescaledb_information.jobs WHERE proc_name = 'policy_compression'") == "2"
    assert counts(prod)["predictions"] == before["predictions"]
    assert prod.playbook("db-migrate.yml").ok().changed == 0


def test_a_rollback_that_would_drop_rows_asks_for_confirmation(prod):
    traffic(prod, 3)
    before = (versions(prod), counts(prod))
    run = prod.playbook("db-rollback.yml", "-e", "timescaledb_schema_target_version=1")
    assert run.rc != 0
    assert any("drops predictions (" in m and "timescaledb_schema_confirm_data_loss=true" in m for m in run.failures)
    assert (versions(prod), counts(prod)) == before, "the refused rollback changed the database"


def backup_files(prod) -> list[str]:
    out = prod.exec("ops-container", "find", "/backups", "-maxdepth", "1", "-name", "*.dump", "-printf", "%f\n")
    return sorted(out.split())


def test_backup_writes_a_custom_format_dump_to_the_docker_host_and_rotates(prod):
    traffic(prod, 5)
    # Nine dumps from 8..16 days ago, older than the 7-day retention.
    for days in range(8, 17):
        stamp = time.strftime("%Y%m%d_%H%M%S", time.gmtime(time.time() - days * 86400))
        for suffix in (".dump", ".manifest.json"):
            path = f"/backups/prediction_db_{stamp}{suffix}"
            prod.exec("ops-container", "sh", "-c", f"echo old > {path} && touch -d '{days} days ago' {path}")
    prod.playbook("backup.yml").ok()
    dumps = backup_files(prod)
    newest = dumps[-1]
    # On the Docker host: the backups volume's own folder holds the dump, in pg_dump's custom format.
    volume = prod.docker.volumes.get(f"{prod.prefix}-backups").attrs["Mountpoint"]
    with open(os.path.join(volume, newest), "rb") as f:
        assert f.read(5) == b"PGDMP"
    toc = prod.exec("ops-container", "/usr/lib/postgresql/15/bin/pg_restore", "--list", f"/backups/{newest}")
    assert "TABLE DATA public predictions" in toc
    # Older than 7 days are deleted, except what it takes to keep the newest 7 (prod's keep_min).
    assert len(dumps) == 7, dumps
    print(f"\n[ops] backup: {newest} written; 9 dumps older than 7 days, {len(dumps) - 1} of them kept")


def test_restore_into_a_recreated_empty_database_container(prod):
    traffic(prod, 10)
    time.sleep(1.5)
    prod.playbook("backup.yml").ok()
    before = counts(prod)
    jobs = sorted(tuple(r) for r in prod.sql(
        "SELECT proc_name, hypertable_name FROM timescaledb_information.jobs WHERE hypertable_name IS NOT NULL"))
    # The database container again, on an emptied volume: all data gone (`pulumi up --replace`).
    volume = f"{prod.prefix}-timescaledb-data"
    prod.container("database-container").stop(timeout=60)
    prod.docker.containers.run("prediction-local/debian:bookworm", ["sh", "-c", "rm -rf /data/* /data/.[!.]*"],
                               volumes={volume: {"bind": "/data", "mode": "rw"}}, remove=True)
    prod.up(replace=("database-container",))
    assert prod.scalar("SELECT to_regclass('predictions') IS NULL") == "t", "the new database is not empty"
    run = prod.playbook("restore.yml").ok()
    print(f"\n[ops] restore into an empty database: {run.messages()[-1] if run.messages() else ''}")
    assert counts(prod) == before
    assert {r[0] for r in prod.sql("SELECT hypertable_name FROM timescaledb_information.hypertables")} == {
        "predictions", "prediction_metrics"}
    assert sorted(tuple(r) for r in prod.sql(
        "SELECT proc_name, hypertable_name FROM timescaledb_information.jobs WHERE hypertable_name IS NOT NULL")) == jobs
    # The service writes again, as prediction_app, once it has reconnected.
    traffic(prod, 2)


def corrupt_copy(prod, how: str) -> str:
    """A damaged copy of the newest dump under a newer name, with the original's manifest."""
    newest = backup_files(prod)[-1]
    stamp = time.strftime("%Y%m%d_%H%M%S", time.gmtime(time.time() + 3600))
    target = f"prediction_db_{stamp}"
    src = f"/backups/{newest[:-5]}"
    script = {"truncated": f"head -c 2000 {src}.dump > /backups/{target}.dump",
              "corrupt": f"cp {src}.dump /backups/{target}.dump && printf 'XXXX' | dd of=/backups/{target}.dump "
                         f"bs=1 seek=3000 conv=notrunc 2>/dev/null",
              "other-database": f"cp {src}.dump /backups/{target}.dump"}[how]
    prod.exec("ops-container", "sh", "-c", f"{script} && cp {src}.manifest.json /backups/{target}.manifest.json")
    if how == "other-database":
        prod.exec("ops-container", "sed", "-i", 's/"database": "prediction_db"/"database": "billing_db"/',
                  f"/backups/{target}.manifest.json")
    return f"{target}.dump"


@pytest.mark.parametrize("how, expected", [("truncated", "does not match its manifest"),
                                           ("corrupt", "does not match its manifest"),
                                           ("other-database", "is a dump of database 'billing_db'")])
def test_a_bad_dump_is_refused_before_the_database_is_touched(prod, how, expected):
    if not backup_files(prod):
        prod.playbook("backup.yml").ok()
    bad = corrupt_copy(prod, how)
    traffic(prod, 2)
    time.sleep(1.5)
    before = counts(prod)
    run = prod.playbook("restore.yml", "-e", f"db_restore_dump_file={bad}")
    assert run.rc != 0 and any(expected in m for m in run.failures), run.failures
    assert counts(prod) == before
    prod.exec("ops-container", "sh", "-c", f"rm -f /backups/{bad} /backups/{bad[:-5]}.manifest.json")


def test_redis_tune_applies_the_stack_files_values(prod):
    prod.exec("cache-container", "redis-cli", "CONFIG", "SET", "maxmemory", "1mb")
    prod.exec("cache-container", "redis-cli", "CONFIG", "SET", "maxmemory-policy", "noeviction")
    assert prod.playbook("redis-tune.yml", "--check").ok().changed > 0
    assert prod.exec("cache-container", "redis-cli", "CONFIG", "GET", "maxmemory").split()[1] == "1048576"
    prod.playbook("redis-tune.yml").ok()

    def get(name):
        return prod.exec("cache-container", "redis-cli", "CONFIG", "GET", name).split()[1]
    assert (get("maxmemory"), get("maxmemory-policy"), get("timeout"), get("tcp-keepalive")) == (
        str(2 * 2**30), "allkeys-lru", "300", "60")
    assert prod.playbook("redis-tune.yml").ok().changed == 0


def test_healthcheck_names_the_stopped_container(prod):
    prod.playbook("healthcheck.yml").ok()
    redis = prod.container("cache-container")
    redis.stop(timeout=10)
    try:
        run = prod.playbook("healthcheck.yml")
    finally:
        redis.start()
    assert run.rc != 0
    [failure] = [m for m in run.failures if "DOWN" in m]
    assert "Redis" in failure and f"container {prod.prefix}-redis" in failure
    wait_until(lambda: redis.reload() or redis.attrs["State"]["Health"]["Status"] == "healthy", 60, "Redis back")
    wait_until(lambda: prod.playbook("healthcheck.yml").rc == 0, 60, "the health check to pass again")


def test_missing_password_stops_in_the_first_task(prod):
    run = prod.playbook("db-tune.yml", env={"PREDICTION_DB_PASSWORD": ""})
    assert run.rc != 0
    assert run.failures and "PREDICTION_DB_PASSWORD is not set" in run.failures[0]
    assert "prod-ops" not in run.doc.get("stats", {}), "tasks ran in the stack before the check"


def test_unreachable_stack_stops_in_the_first_task(prod):
    run = prod.playbook("backup.yml", env={"STACK_PREFIX": "no-such-stack"})
    assert run.rc != 0
    assert run.failures and "The stack no-such-stack cannot be reached" in run.failures[0]
    assert "STACK_PREFIX" in run.failures[0] and "DOCKER_HOST" in run.failures[0]


def test_grafana_playbook_says_what_is_missing_on_this_engine(prod):
    # No Grafana image can be built here, so the container Pulumi would create does not exist.
    run = prod.playbook("grafana.yml")
    assert run.rc != 0
    assert any(f"There is no Grafana container {prod.prefix}-grafana" in m for m in run.failures)
