"""Predictions are logged to PostgreSQL off the request path, survive an outage, and are flushed on SIGTERM."""
from __future__ import annotations

import asyncio
import signal
import threading

import psycopg2
import pytest
import requests

from metrics_text import sample
from service_support import AUTH, IRIS, ServiceProcess, service_env, wait_until
from prediction_service.app import create_app
from prediction_service.storage import apply_migrations

URL = "/api/v1/models/iris/predict"


def count_rows(dsn: str, where: str = "TRUE", params=()) -> int:
    try:
        with psycopg2.connect(dsn, connect_timeout=2) as conn, conn.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM predictions WHERE {where}", params)
            return cur.fetchone()[0]
    except psycopg2.OperationalError:
        return -1


async def eventually(check, timeout: float = 30.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check() and loop.time() < deadline:
        await asyncio.sleep(0.1)
    return check()


async def test_rows_appear_in_predictions(aiohttp_client, make_settings, fresh_db):
    apply_migrations(fresh_db)
    client = await aiohttp_client(create_app(make_settings(timescale_url=fresh_db, db_logging="true",
                                                           db_flush_interval_seconds=0.1)))
    single = await (await client.post(URL, json=IRIS, headers=AUTH)).json()
    batch = await (await client.post(URL, json={"instances": [IRIS, dict(IRIS, petal_width=2.4)]},
                                     headers=AUTH)).json()
    assert await eventually(lambda: count_rows(fresh_db) == 3)

    with psycopg2.connect(fresh_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT model, model_version, instance, input, output, cache_hit, latency_ms "
                    "FROM predictions WHERE request_id = %s", (single["request_id"],))
        ((model, version, instance, inp, out, cache_hit, latency),) = cur.fetchall()
        cur.execute("SELECT input, cache_hit FROM predictions WHERE request_id = %s ORDER BY input->>'petal_width'",
                    (batch["request_id"],))
        batch_rows = cur.fetchall()
    assert (model, version, instance) == ("iris", "1", "test")
    assert inp == IRIS and out["label"] == "setosa" and cache_hit is False and latency > 0
    # The batch's first instance repeats the single request: logged as a cache hit.
    assert [r[0] for r in batch_rows] == [IRIS, dict(IRIS, petal_width=2.4)]
    assert [r[1] for r in batch_rows] == [True, False]
    ready = await (await client.get("/ready")).json()
    assert ready["database"] == "up" and ready["status"] == "ready"


async def test_ready_names_the_storage_the_rows_go_to(aiohttp_client, make_settings, postgres_in_mode, storage_mode):
    """/ready says whether the predictions land in TimescaleDB hypertables or native partitions."""
    dsn = postgres_in_mode.create_database(f"ready_storage_{storage_mode}")
    apply_migrations(dsn)
    client = await aiohttp_client(create_app(make_settings(timescale_url=dsn, db_logging="true",
                                                           db_flush_interval_seconds=0.1)))
    body = await (await client.get("/ready")).json()
    assert body["database"] == "up" and body["storage"] == storage_mode
    await client.post(URL, json=IRIS, headers=AUTH)
    assert await eventually(lambda: count_rows(dsn) == 1)


@pytest.mark.slow
async def test_database_outage_loses_no_rows(aiohttp_client, make_settings, postgres_factory):
    pg = postgres_factory()
    dsn = pg.create_database("outage")
    apply_migrations(dsn)
    client = await aiohttp_client(create_app(make_settings(timescale_url=dsn, db_logging="true",
                                                           db_flush_interval_seconds=0.1)))
    pg.stop()
    statuses = []
    for i in range(1000):
        resp = await client.post(URL, json=dict(IRIS, sepal_length=4.0 + i / 1000), headers=AUTH)
        statuses.append(resp.status)
    assert statuses == [200] * 1000
    ready = await client.get("/ready")
    assert ready.status == 200
    body = await ready.json()
    assert body["database"] == "down" and body["status"] == "degraded" and body["db_queue_rows"] == 1000

    pg.start()
    assert await eventually(lambda: count_rows(dsn) == 1000, timeout=60), count_rows(dsn)


@pytest.mark.slow
def test_sigterm_answers_what_it_accepted_and_flushes_every_row(demo_models, redis_server, fresh_db):
    """Under load, SIGTERM: the process stops, exits 0, and every prediction it answered is in the table.

    (aiohttp stops reading from connections at shutdown, so a request whose body is still being
    uploaded cannot complete: it gets 503 shutting_down with Retry-After; requests already received
    are answered.)
    """
    apply_migrations(fresh_db)
    # A long flush interval: rows stay queued in memory until shutdown forces the flush.
    svc = ServiceProcess(service_env(demo_models, redis_server.url, fresh_db, db_logging="true",
                                     db_flush_interval_seconds=300))
    answered: list[int] = []
    refused: list[tuple] = []
    stop = threading.Event()

    def load(worker: int):
        i = 0
        while not stop.is_set():
            i += 1
            try:
                r = requests.post(f"{svc.url}{URL}", json=dict(IRIS, sepal_width=worker + i / 10000),
                                  headers={**AUTH, "Connection": "close"}, timeout=30)
            except requests.ConnectionError:
                return  # refused or cut before an answer: the listener is gone
            answered.append(r.status_code)
    try:
        threads = [threading.Thread(target=load, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        assert wait_until(lambda: len(answered) >= 200, timeout=60)
        assert count_rows(fresh_db) == 0  # still queued in memory
        svc.proc.send_signal(signal.SIGTERM)
        assert svc.proc.wait(timeout=60) == 0
        stop.set()
        for t in threads:
            t.join(timeout=60)
        assert set(refused) <= {(503, "shutting_down", "1")}, refused
        assert answered.count(200) >= 200
        assert count_rows(fresh_db) == answered.count(200)
    finally:
        stop.set()
        svc.stop()


@pytest.mark.slow
def test_sigterm_during_an_upload_answers_503_shutting_down(demo_models, redis_server, fresh_db):
    """A request caught mid-body by SIGTERM is told to retry elsewhere (503 + Retry-After), not 408."""
    import socket

    svc = ServiceProcess(service_env(demo_models, redis_server.url, fresh_db, request_timeout_seconds=3))
    try:
        sock = socket.create_connection(("127.0.0.1", svc.port), timeout=30)
        sock.sendall(f"POST {URL} HTTP/1.1\r\nHost: x\r\nX-API-Key: {AUTH['X-API-Key']}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"sepal".encode())
        assert wait_until(lambda: requests.get(f"{svc.url}/metrics", timeout=5).text.count(
            "prediction_service_requests_in_progress 1.0") == 1, timeout=10)
        svc.proc.send_signal(signal.SIGTERM)
        head = sock.recv(4096)
        sock.close()
        assert head.startswith(b"HTTP/1.1 503"), head
        assert b'"code":"shutting_down"' in head.replace(b" ", b"") and b"Retry-After: 1" in head
        assert svc.proc.wait(timeout=30) == 0
    finally:
        svc.stop()


@pytest.mark.slow
@pytest.mark.parametrize("ack", ["true", "false"])
def test_sigkill_keeps_every_answered_row_only_when_answers_wait_for_the_commit(demo_models, redis_server,
                                                                               fresh_db, ack):
    """PREDICTION_DB_ACK_AFTER_WRITE: a process killed outright (OOM killer, a lost node) has written
    the row of every prediction it answered. Without it the rows wait for the next flush (here
    300 s) and the kill takes them: the reason the setting exists."""
    apply_migrations(fresh_db)
    svc = ServiceProcess(service_env(demo_models, redis_server.url, fresh_db, db_logging="true",
                                     db_flush_interval_seconds=300, db_ack_after_write=ack))
    answered: list[str] = []
    stop = threading.Event()

    def load(worker: int):
        session, i = requests.Session(), 0
        while not stop.is_set():
            i += 1
            try:
                r = session.post(f"{svc.url}{URL}", json=dict(IRIS, sepal_width=worker + i / 10000),
                                 headers=AUTH, timeout=30)
            except requests.ConnectionError:
                return  # the process is gone
            if r.status_code == 200:
                answered.append(r.json()["request_id"])
    try:
        threads = [threading.Thread(target=load, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        assert wait_until(lambda: len(answered) >= 300, timeout=60)
        svc.proc.send_signal(signal.SIGKILL)
        svc.proc.wait(timeout=30)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        stored = count_rows(fresh_db, "request_id = ANY(%s)", (answered,))
        print(f"\n[writer] SIGKILL with PREDICTION_DB_ACK_AFTER_WRITE={ack}: {len(answered)} answered, "
              f"{stored} of their rows in the table")
        if ack == "true":
            assert stored == len(answered)
        else:
            assert stored < len(answered)
    finally:
        stop.set()
        svc.stop()


async def test_ack_after_write_does_not_hold_answers_while_the_database_is_down(aiohttp_client, make_settings,
                                                                               postgres_factory):
    """An outage degrades acknowledged writes to buffered ones: the answers go out (none waits for
    the 30 s ack timeout, which the 5 s request deadline would turn into 503s), the rows arrive later."""
    pg = postgres_factory()
    dsn = pg.create_database("ack_outage")
    apply_migrations(dsn)
    client = await aiohttp_client(create_app(make_settings(
        timescale_url=dsn, db_logging="true", db_flush_interval_seconds=300, db_ack_after_write="true",
        db_ack_timeout_seconds=30, request_timeout_seconds=5)))

    async def acks() -> dict[str, float]:
        text = await (await client.get("/metrics")).text()
        return {o: sample(text, "prediction_service_db_acks_total", outcome=o) for o in ("committed", "not_committed")}

    before = await acks()
    resp = await client.post(URL, json=IRIS, headers=AUTH)
    assert resp.status == 200 and count_rows(dsn) == 1  # acknowledged: in the table already
    pg.stop()
    statuses = [(await client.post(URL, json=dict(IRIS, sepal_length=4.0 + i / 100), headers=AUTH)).status
                for i in range(50)]
    assert statuses == [200] * 50
    after = await acks()
    assert {o: after[o] - before[o] for o in after} == {"committed": 1, "not_committed": 50}
    pg.start()
    assert await eventually(lambda: count_rows(dsn) == 51, timeout=60), count_rows(dsn)
