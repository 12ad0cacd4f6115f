"""Changing a running prod stack the way `pulumi up` changes it (the stack emulator, with
pulumi-docker's rules), under a steady stream of predictions through the gateway: what each change
does to the containers, and what the users and the data see. Every test prints its numbers and
leaves the stack as the stack file describes it.

Each change is expressed as `pulumi config set --path …` on top of Pulumi.prod.yaml (the emulator's
``config``); the plan each run applied is on the result and is checked against what the change
should do."""
from __future__ import annotations

import time

import pytest

from docker_support import derived_image, settled_rows
from harness.waiting import wait_until

from stack_emulator import stack as emulator

pytestmark = pytest.mark.slow


def replica_state(prod) -> dict[str, tuple[str, str]]:
    """Replica alias -> (container id, started at): what a restart or a replacement changes."""
    out = {}
    for logical in (f"service-{i}" for i in range(1, len(prod.run.replicas()) + 1)):
        c = prod.container(logical)
        out[logical] = (c.id, c.attrs["State"]["StartedAt"])
    return out


def changed(run) -> dict[str, str]:
    out = {s.name: s.op for s in run.plan.deletes}
    out.update({s.name: s.op for s in run.plan.steps if s.op != "same"})
    return {k: v for k, v in out.items() if "image" not in k}


def test_a_redis_setting_replaces_redis_and_leaves_the_replicas_serving(prod):
    replicas = replica_state(prod)
    redis_before = prod.container("cache-container").id
    try:
        with prod.load() as load:
            load.wait_for(50)
            run = prod.up(config={"cache": {"maxmemory": "1gb"}})
            load.wait_for(100)
        print(f"\n[lifecycle] cache.maxmemory 2gb -> 1gb: plan {changed(run)}; {len(load.results)} requests, "
              f"{len(load.failed)} failed; replicas restarted: "
              f"{sum(replica_state(prod)[k] != v for k, v in replicas.items())}")
        assert changed(run) == {"cache-container": "replace"}
        assert prod.container("cache-container").id != redis_before
        assert "1gb" in prod.container("cache-container").attrs["Args"]
        assert replica_state(prod) == replicas, "a Redis replacement must not touch the replicas"
        assert not load.failed, load.failed[:5]
    finally:
        prod.up(config={})


def test_a_memory_limit_is_changed_in_place_without_a_restart(prod):
    replicas = replica_state(prod)
    try:
        with prod.load() as load:
            load.wait_for(30)
            run = prod.up(config={"service": {"memoryMb": 768}})
            load.wait_for(30)
        limits = {prod.container(k).attrs["HostConfig"]["Memory"] for k in replicas}
        print(f"\n[lifecycle] service.memoryMb 1024 -> 768: plan {changed(run)}; limits now {limits}; "
              f"{len(load.results)} requests, {len(load.failed)} failed")
        assert changed(run) == {k: "update" for k in replicas}
        assert limits == {768 * 1024 * 1024}
        assert replica_state(prod) == replicas, "pulumi-docker updates memory in place: no new container, no restart"
        assert not load.failed, load.failed[:5]
    finally:
        prod.up(config={})


def gateway_trouble(prod, since: float) -> list[str]:
    """The gateway's log lines since ``since`` that are not a plain 200: what nginx saw when a
    request failed (its errors, and the upstream statuses of every attempt)."""
    logs = prod.container("gateway-container").logs(since=int(since), stdout=True, stderr=True).decode(errors="replace")
    return [line for line in logs.splitlines() if "[error]" in line or "[warn]" in line or
            (" ust=" in line and " ust=200 " not in line)]


def test_replicas_three_to_two_to_three_under_load(prod):
    figures = []
    started = time.time()
    try:
        for count in (2, 3):
            before = settled_rows(prod)
            with prod.load() as load:
                load.wait_for(30)
                run = prod.up(config={"service": {"replicas": count}})
                load.wait_for(60)
            lost = before + load.ok - settled_rows(prod)
            figures.append((count, changed(run), len(load.results), load.failed, lost))
            assert len(prod.run.replicas()) == count
            wait_until(lambda: len({r["metric"]["instance"] for r in prod.promql(
                'up{job="prediction_service"} == 1')}) == count, 60, f"Prometheus to scrape {count} replicas")
    finally:
        prod.up(config={})
    print("\n[lifecycle] service.replicas 3 -> 2 -> 3: " + "; ".join(
        f"{c}: plan {p}, {n} requests, {len(f)} failed, {lost} rows lost" for c, p, n, f, lost in figures))
    assert figures[0][1] == {"service-3": "delete"} and figures[1][1] == {"service-3": "create"}
    assert all(not f and lost == 0 for _, _, _, f, lost in figures), (
        [f[:5] for _, _, _, f, _ in figures], gateway_trouble(prod, started)[-20:])


DRILL_MIGRATION = """-- A migration that needs something the operator must create first.
DO $$ BEGIN
  IF to_regclass('migration_drill_ready') IS NULL THEN
    RAISE EXCEPTION 'migration_drill_ready is missing: create it, then deploy again';
  END IF;
END $$;
INSERT INTO schema_migrations (version, name) VALUES (99, 'drill') ON CONFLICT DO NOTHING;
"""


def test_a_failing_migration_keeps_the_old_release_serving_and_a_plain_up_after_the_fix_deploys(prod):
    derived_image(prod, "0.99-migration-drill", ["COPY 0099_drill.sql /app/migrations/0099_drill.sql"],
                  {"0099_drill.sql": DRILL_MIGRATION})
    replicas = replica_state(prod)
    volumes_before = {v.name for v in prod.docker.volumes.list() if v.name.startswith(prod.prefix + "-")}
    config = {"service": {"image": "prediction-service:0.99-migration-drill", "migrateTimeoutSeconds": 20}}
    try:
        rows_before = settled_rows(prod)
        with prod.load() as load:
            load.wait_for(30)
            with pytest.raises(emulator.StackError) as failed:
                prod.up(config=config)
            load.wait_for(30)
        rows_after = settled_rows(prod)
        message = str(failed.value)
        print(f"\n[lifecycle] failing migration: {message[:200]}…; {len(load.results)} requests, "
              f"{len(load.failed)} failed, rows {rows_before} -> {rows_after} ({load.ok} answered)")
        assert "service-migrate" in message and "healthy state" in message
        assert "migration_drill_ready is missing" in message  # the job's own log says why
        # Nothing rolled back, nothing lost: the old replicas serve on, the data and volumes stay.
        assert replica_state(prod) == replicas and not load.failed, load.failed[:5]
        assert rows_after == rows_before + load.ok
        assert volumes_before <= {v.name for v in prod.docker.volumes.list()}
        # The job's failed create is in the state: the next plain `pulumi up` replaces it.
        preview = emulator.preview("prod", var_dir=prod.run.var_dir, config=config)
        [job] = [s for s in preview.steps if s.name == "service-migrate"]
        assert job.op == "replace" and any("#initerror" in r for r in job.reasons)

        prod.sql("CREATE TABLE migration_drill_ready ()")  # the operator's fix
        with prod.load() as load:
            load.wait_for(30)
            run = prod.up()  # plain: the same config as the failed run
            load.wait_for(30)
        print(f"[lifecycle] after the fix, plain up: plan {changed(run)}; {len(load.results)} requests, "
              f"{len(load.failed)} failed")
        assert changed(run)["service-migrate"] == "replace"
        assert prod.scalar("SELECT count(*) FROM schema_migrations WHERE version = 99") == "1"
        assert not load.failed, load.failed[:5]
    finally:
        prod.sql("DELETE FROM schema_migrations WHERE version = 99; DROP TABLE IF EXISTS migration_drill_ready")
        prod.up(config={})


def test_stack_down_refuses_protected_volumes_unless_told(prod):
    with pytest.raises(emulator.StackError) as refused:
        emulator.down("prod", var_dir=prod.run.var_dir, quiet=True)
    message = str(refused.value)
    print(f"\n[lifecycle] make stack-down STACK=prod: {message}")
    assert "protected, so not destroyed" in message and "database-data" in message and "ops-backups" in message
    assert "EXCLUDE_PROTECTED=1" in message and "UNPROTECT=1" in message
    assert prod.predict().status_code == 200, "a refused stack-down must change nothing"


def test_keep_volumes_down_then_up_keeps_every_row_and_every_login(prod):
    prod.predict()
    rows = settled_rows(prod)
    api_key = prod.api_key
    removed = emulator.down("prod", var_dir=prod.run.var_dir, keep_volumes=True, quiet=True)
    assert not [c for c in prod.docker.containers.list(all=True) if c.name.startswith(prod.prefix + "-")]
    run = prod.up()
    print(f"\n[lifecycle] KEEP_VOLUMES=1 stack-down ({len(removed)} objects removed) then stack-up: plan "
          f"{run.plan.counts()}; rows {rows} before, {settled_rows(prod)} after")
    assert settled_rows(prod) == rows
    assert prod.api_key == api_key and prod.predict().status_code == 200  # the same API key
    # The replicas log in as prediction_app, the ops playbooks as the owner: both passwords kept.
    wait_until(lambda: int(prod.scalar("SELECT count(*) FROM predictions")) == rows + 1, 60, "the new prediction's row")
    prod.playbook("healthcheck.yml").ok()
