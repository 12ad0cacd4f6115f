"""Failure drills on the prod stack, each under a steady stream of predictions through the gateway:
what the user sees (failed requests) and what the platform keeps (rows, restarts) is printed and
asserted. Order matters only for speed; each drill leaves the stack healthy."""
import os
import signal
import time

import pytest

from harness.waiting import wait_until

pytestmark = pytest.mark.slow


def _rows(prod) -> int:
    return int(prod.scalar("SELECT count(*) FROM predictions"))


def _wait_rows(prod, expected: int, what: str) -> int:
    return wait_until(lambda: (n := _rows(prod)) >= expected and n, 90, what)


def test_killed_replica_loses_no_request_and_is_restarted(prod):
    replica = prod.container("service-1")
    restarts = replica.attrs["RestartCount"]
    with prod.load() as load:
        load.wait_for(50)
        # A crash, as the kernel's OOM killer does it: SIGKILL to the replica's process from the host.
        # (`docker kill` is a manual stop, which Docker's restart policy deliberately leaves stopped.)
        os.kill(replica.attrs["State"]["Pid"], signal.SIGKILL)
        load.wait_for(400, timeout=60)
    print(f"\n[drill] SIGKILL of a replica under load: {len(load.results)} requests, {len(load.failed)} failed")
    assert not load.failed, load.failed[:5]
    wait_until(lambda: (replica.reload() or replica.attrs["RestartCount"] > restarts)
               and replica.attrs["State"]["Health"]["Status"] == "healthy", 90,
               "the restart policy to bring the killed replica back healthy")


def test_replaced_replica_is_served_without_restarting_the_gateway(prod):
    gateway = prod.container("gateway-container")
    gateway_started = gateway.attrs["State"]["StartedAt"]
    network = f"{prod.prefix}-app"
    old_ip = prod.container("service-1").attrs["NetworkSettings"]["Networks"][network]["IPAddress"]
    # A change to the replicas' environment replaces them create-before-delete, so a new container
    # cannot have its old one's address. (`pulumi up --replace` of one replica would fail: its new
    # container would get the old one's name, its inputs being the same.)
    run = prod.up(config={"service": {"env": {"PREDICTION_CACHE_TTL_SECONDS": "299"}}})
    assert {s.name for s in run.plan.steps if s.op == "replace"} == {"service-1", "service-2", "service-3"}
    new_ip = prod.container("service-1").attrs["NetworkSettings"]["Networks"][network]["IPAddress"]
    others = [prod.container(f"service-{i}") for i in (2, 3)]
    for c in others:
        c.stop(timeout=45)
    try:
        # Only the replaced replica is left: every answer now comes from its new address.
        ok = wait_until(lambda: prod.predict().status_code == 200, 30,
                        "the gateway to reach the replaced replica at its new address")
        with prod.load(workers=2) as load:
            load.wait_for(100)
    finally:
        for c in others:
            c.start()
    gateway.reload()
    print(f"\n[drill] replica replaced {old_ip} -> {new_ip}; through the gateway alone on it: "
          f"{len(load.results)} requests, {len(load.failed)} failed")
    assert ok and new_ip != old_ip
    assert not load.failed, load.failed[:5]
    assert gateway.attrs["State"]["StartedAt"] == gateway_started, "nginx was restarted"
    for i in (2, 3):
        wait_until(lambda: prod.container(f"service-{i}").attrs["State"]["Health"]["Status"] == "healthy", 90,
                   f"service-{i} healthy again")
    prod.up(config={})


def test_database_restart_under_load_loses_no_request_and_no_row(prod):
    before = _rows(prod)
    db = prod.container("database-container")
    with prod.load() as load:
        load.wait_for(50)
        db.restart(timeout=30)
        load.wait_for(300, timeout=90)
    ok = load.ok
    print(f"\n[drill] database restart under load: {len(load.results)} requests, {len(load.failed)} failed")
    assert not load.failed, load.failed[:5]
    # Every answered prediction is one row (distinct instances, one each); the writers buffered
    # them while the database was away.
    after = _wait_rows(prod, before + ok, f"{ok} new rows after the database came back")
    print(f"[drill] rows: {before} before, {after} after, {ok} predictions answered: {after - before - ok} lost")
    assert after - before == ok


def test_database_recreated_on_its_volume_keeps_every_row(prod):
    prod.predict()
    wait_until(lambda: int(prod.scalar("SELECT count(*) FROM predictions")) > 0, 30, "some rows")
    time.sleep(1.5)  # let the writers flush what they hold
    before = _rows(prod)
    # `pulumi up --replace` of the database: delete-before-replace (a fixed name), its volume kept.
    run = prod.up(replace=("database-container",))
    assert [(s.op, s.delete_before_replace, s.cascade) for s in run.plan.changes] == [("replace", True, [])], \
        "nothing else may be replaced with the database"
    after = _rows(prod)
    print(f"\n[drill] database container replaced on its volume: {before} rows before, {after} after")
    assert after == before
    assert prod.predict().status_code == 200


def test_redis_restart_keeps_predictions_flowing(prod):
    redis = prod.container("cache-container")
    with prod.load() as load:
        load.wait_for(50)
        redis.restart(timeout=10)
        load.wait_for(300, timeout=60)
    print(f"\n[drill] Redis restart under load: {len(load.results)} requests, {len(load.failed)} failed")
    assert not load.failed, load.failed[:5]
    wait_until(lambda: prod.exec("cache-container", "redis-cli", "ping").strip() == "PONG", 30, "Redis back")


def test_every_replica_down_is_a_json_error_with_retry_after_then_service_resumes(prod):
    replicas = [prod.container(f"service-{i}") for i in (1, 2, 3)]
    for c in replicas:
        c.stop(timeout=45)
    try:
        # nginx answers itself now: in the API's error shape, telling the client when to come back.
        # (a list: a requests.Response with an error status is falsy)
        [r] = wait_until(lambda: (r := prod.predict()).status_code in (502, 503, 504) and [r], 30,
                         "the gateway to notice no replica is left")
        body = r.json()
        print(f"\n[drill] every replica stopped: {r.status_code} {body}")
        assert r.headers["Content-Type"].startswith("application/json")
        assert set(body["error"]) == {"code", "message"} and int(r.headers["Retry-After"]) > 0
    finally:
        for c in replicas:
            c.start()
    for c in replicas:
        wait_until(lambda: (c.reload() or c.attrs["State"]["Health"]["Status"]) == "healthy", 90, f"{c.name} healthy")
    wait_until(lambda: prod.predict().status_code == 200, 30, "predictions through the gateway again")
