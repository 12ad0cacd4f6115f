"""PredictionWriter against real PostgreSQL servers: batching, outages, the queue bound, close()."""
from __future__ import annotations

import asyncio
import math
import time
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge

from prediction_service.storage import PredictionWriter, apply_migrations

from harness.postgres import query


def private_metrics() -> SimpleNamespace:
    """The four contract metrics on a registry of their own, so counts are exact per test."""
    reg = CollectorRegistry()
    ns = SimpleNamespace(
        registry=reg,
        DB_WRITE_QUEUE_ROWS=Gauge("prediction_service_db_write_queue_rows", "q", registry=reg),
        DB_ROWS_WRITTEN=Counter("prediction_service_db_rows_written_total", "w", registry=reg),
        DB_ROWS_DROPPED=Counter("prediction_service_db_rows_dropped_total", "d", registry=reg),
        DB_WRITE_ERRORS=Counter("prediction_service_db_write_errors_total", "e", registry=reg),
    )
    ns.value = lambda name: reg.get_sample_value(f"prediction_service_{name}")
    return ns


def row(i: int, *, model: str = "iris", hit: bool = False, when: datetime | None = None) -> dict:
    return {"time": when or datetime.now(timezone.utc), "model": model, "model_version": "1",
            "request_id": f"req-{i}", "input": {"x": i, "name": "n"}, "output": {"label": i % 3},
            "latency_ms": float(i), "cache_hit": hit}


async def eventually(condition, what: str, timeout: float = 60.0) -> None:
    """Wait for a condition the writer reaches by itself (a liveness bound, not a speed check)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout:.0f} s: {what}")
        await asyncio.sleep(0.05)


def request_ids(dsn: str) -> list[int]:
    return sorted(int(r[0].split("-")[1]) for r in query(dsn, "SELECT request_id FROM predictions"))


async def test_rows_arrive_one_insert_per_batch_with_their_aggregates(migrated_db):
    m = private_metrics()
    writer = PredictionWriter(migrated_db, instance="node-a", batch_max=200, flush_interval=0.05, metrics=m)
    for i in range(500):
        writer.submit(row(i, model="iris" if i < 300 else "wine", hit=i % 4 == 0))
    assert writer.queue_depth == 500
    await writer.start()
    await eventually(lambda: writer.rows_written == 500, "500 rows written")
    await writer.close()

    assert query(migrated_db, "SELECT count(*), count(DISTINCT request_id) FROM predictions") == [(500, 500)]
    # Rows written by one statement share one transaction id: 500 rows = 3 INSERTs (200+200+100).
    batches = query(migrated_db, "SELECT xmin::text, count(*) FROM predictions GROUP BY 1 ORDER BY 2 DESC")
    assert [n for _, n in batches] == [200, 200, 100]
    one = query(migrated_db, "SELECT instance, model, model_version, input, output, latency_ms, cache_hit "
                             "FROM predictions WHERE request_id = 'req-8'")
    assert one == [("node-a", "iris", "1", {"x": 8, "name": "n"}, {"label": 2}, 8.0, True)]

    # The aggregates: committed in the same transactions as their rows, and adding up.
    metric_xids = {r[0] for r in query(migrated_db, "SELECT DISTINCT xmin::text FROM prediction_metrics")}
    assert metric_xids == {x for x, _ in batches}
    sums = query(migrated_db, "SELECT model, sum(requests)::int, sum(cache_hits)::int, max(latency_ms_max) "
                              "FROM prediction_metrics WHERE instance = 'node-a' GROUP BY model ORDER BY model")
    assert sums == [("iris", 300, 75, 299.0), ("wine", 200, 50, 499.0)]
    assert m.value("db_rows_written_total") == 500
    assert m.value("db_rows_dropped_total") == 0
    assert m.value("db_write_queue_rows") == 0


async def test_aggregates_group_by_model_version_and_second_of_the_rows_own_time(migrated_db):
    """PostgreSQL computes them from the batch: requests, cache hits, latency avg (nulls ignored) and max."""
    t0 = datetime(2024, 5, 1, 12, 0, 0, 100_000, tzinfo=timezone.utc)

    def r(i, *, version="1", t=t0, latency=1.0, hit=False):
        return {**row(i, hit=hit, when=t), "model_version": version, "latency_ms": latency}

    writer = PredictionWriter(migrated_db, instance="agg", flush_interval=0.05, metrics=private_metrics())
    for x in (r(0, latency=1.0, hit=True), r(1, latency=3.0), r(2, latency=None),
              r(3, t=t0 + timedelta(seconds=1), latency=5.0), r(4, version="2", latency=7.0, hit=True)):
        writer.submit(x)
    writer.submit(PredictionWriter.Record(t0.timestamp(), "iris", "2", "req-5", {"x": 5}, {"label": 1}, 9.0, False))
    await writer.start()
    await eventually(lambda: writer.rows_written == 6, "6 rows written")
    await writer.close()
    second = t0.replace(microsecond=0)
    got = query(migrated_db, "SELECT time, model, model_version, requests, cache_hits, latency_ms_avg, "
                             "latency_ms_max FROM prediction_metrics WHERE instance = 'agg' ORDER BY 1, 3")
    assert got == [(second, "iris", "1", 3, 1, 2.0, 3.0), (second, "iris", "2", 2, 1, 8.0, 9.0),
                   (second + timedelta(seconds=1), "iris", "1", 1, 0, 5.0, 5.0)]


async def test_close_flushes_what_is_queued(migrated_db):
    writer = PredictionWriter(migrated_db, instance="a", flush_interval=3600, metrics=private_metrics())
    await writer.start()
    for i in range(300):
        writer.submit(row(i))
    await writer.close()
    assert query(migrated_db, "SELECT count(*) FROM predictions") == [(300,)]
    assert writer.queue_depth == 0 and writer.rows_dropped == 0
    writer.submit(row(300))  # after close: counted, not raised
    assert writer.rows_dropped == 1


async def test_postgres_outage_keeps_1000_rows_and_writes_all_after_restart(postgres_factory):
    pg = postgres_factory()
    apply_migrations(pg.dsn())
    m = private_metrics()
    writer = PredictionWriter(pg.dsn(), instance="a", flush_interval=0.05, metrics=m)
    await writer.start()
    writer.submit(row(0))
    await eventually(lambda: writer.rows_written == 1, "first row written")  # the pool holds a connection
    assert await writer.healthy()

    await asyncio.to_thread(pg.stop)
    for i in range(1, 1001):
        writer.submit(row(i))
    await eventually(lambda: writer.write_errors >= 1, "a failed write attempt")
    assert writer.queue_depth == 1000
    assert writer.rows_dropped == 0 and m.value("db_rows_dropped_total") == 0
    assert m.value("db_write_errors_total") >= 1
    writer.health_fresh = 0  # ask the server, not the last result
    assert not await writer.healthy()

    await asyncio.to_thread(pg.start)
    await eventually(lambda: writer.rows_written == 1001, "all rows written after the restart")
    assert request_ids(pg.dsn()) == list(range(1001))
    assert writer.queue_depth == 0 and writer.rows_dropped == 0
    assert await writer.healthy()
    await writer.close()
    assert m.value("db_rows_written_total") == 1001


async def test_queue_bound_drops_oldest_and_counts_every_drop(postgres_factory):
    pg = postgres_factory()
    apply_migrations(pg.dsn())
    await asyncio.to_thread(pg.stop)
    m = private_metrics()
    writer = PredictionWriter(pg.dsn(), instance="a", queue_max=100, batch_max=10, flush_interval=0.05,
                              metrics=m)
    await writer.start()
    for i in range(150):  # no await in between: the writer cannot take a batch meanwhile
        writer.submit(row(i))
    assert writer.queue_depth == 100
    assert writer.rows_dropped == 50 and m.value("db_rows_dropped_total") == 50

    await eventually(lambda: writer.write_errors >= 1, "a failed write attempt")
    # The writer now holds the batch 50..59 in flight: further drops take the oldest queued rows.
    for i in range(150, 155):
        writer.submit(row(i))
    assert writer.queue_depth == 100
    assert writer.rows_dropped == 55 and m.value("db_rows_dropped_total") == 55

    await asyncio.to_thread(pg.start)
    await eventually(lambda: writer.queue_depth == 0, "queue written after the restart")
    await writer.close()
    assert request_ids(pg.dsn()) == list(range(50, 60)) + list(range(65, 155))
    assert m.value("db_rows_written_total") == 100 and m.value("db_rows_dropped_total") == 55


async def test_close_during_outage_counts_unwritten_rows_as_dropped(postgres_factory):
    pg = postgres_factory()
    apply_migrations(pg.dsn())
    await asyncio.to_thread(pg.stop)
    m = private_metrics()
    writer = PredictionWriter(pg.dsn(), instance="a", close_timeout=0.5, metrics=m)
    await writer.start()
    for i in range(20):
        writer.submit(row(i))
    await writer.close()
    assert writer.rows_written == 0
    assert writer.rows_dropped == 20 and m.value("db_rows_dropped_total") == 20
    assert m.value("db_write_queue_rows") == 0


async def test_unmigrated_database_keeps_rows_until_migrated(fresh_db):
    writer = PredictionWriter(fresh_db, instance="a", flush_interval=0.05, metrics=private_metrics())
    await writer.start()
    for i in range(10):
        writer.submit(row(i))
    await eventually(lambda: writer.write_errors >= 1, "a failed write (no table yet)")
    assert writer.queue_depth == 10 and writer.rows_dropped == 0
    apply_migrations(fresh_db)
    await eventually(lambda: writer.rows_written == 10, "rows written once the tables exist")
    await writer.close()
    assert request_ids(fresh_db) == list(range(10))


async def test_bad_rows_never_raise_and_are_dropped_and_counted_alone(migrated_db):
    m = private_metrics()
    writer = PredictionWriter(migrated_db, instance="a", flush_interval=0.05, metrics=m)
    await writer.start()
    writer.submit("not a dict")                                   # malformed
    writer.submit({"model": None, "input": {}, "output": {}})     # malformed: no model
    writer.submit({**row(1), "time": "yesterday"})                # malformed: time not a datetime
    writer.submit({**row(2), "input": {"text": "nul\x00byte"}})   # refused by jsonb (\u0000)
    writer.submit({**row(3), "output": {"p": math.nan}, "latency_ms": math.inf})  # stored with nulls
    writer.submit({**row(4), "time": datetime(2024, 5, 1, 12, 0)})  # naive time: taken as UTC
    writer.submit(row(5))
    await eventually(lambda: writer.rows_written + writer.rows_dropped == 7, "every row written or dropped")
    await writer.close()
    assert writer.rows_dropped == 4 and m.value("db_rows_dropped_total") == 4
    assert request_ids(migrated_db) == [3, 4, 5]
    assert query(migrated_db, "SELECT output, latency_ms FROM predictions WHERE request_id = 'req-3'") == [
        ({"p": None}, None)]
    assert query(migrated_db, "SELECT time FROM predictions WHERE request_id = 'req-4'") == [
        (datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc),)]


async def test_text_that_looks_like_sql_quoting_and_exact_times_arrive_unchanged(migrated_db):
    """The batch travels as a dollar-quoted literal: quotes, backslashes and the quote tag itself
    in any value must come back exactly, and so must each row's time to the microsecond."""
    tricky = "it's \\ $r$ $r1$ $$ \"q\" ' nœud"
    writer = PredictionWriter(migrated_db, instance=tricky, flush_interval=0.05, metrics=private_metrics())
    t0 = datetime(2024, 5, 1, 12, 0, 0, 123_457, tzinfo=timezone.utc)
    writer.submit({**row(0, when=t0), "request_id": tricky, "input": {tricky: tricky}})
    writer.submit(PredictionWriter.Record((t0 + timedelta(microseconds=1)).timestamp(), "iris", "1", "req-1",
                                          {"x": 1}, {"label": tricky}, 1.0, True))
    await writer.start()
    await eventually(lambda: writer.rows_written == 2, "2 rows written")
    await writer.close()
    got = query(migrated_db, "SELECT time, instance, request_id, input, output FROM predictions ORDER BY time")
    assert got == [(t0, tricky, tricky, {tricky: tricky}, {"label": 0}),
                   (t0 + timedelta(microseconds=1), tricky, "req-1", {"x": 1}, {"label": tricky})]
    assert query(migrated_db, "SELECT DISTINCT instance FROM prediction_metrics") == [(tricky,)]


@pytest.mark.parametrize("storage_mode", ["partitions"])  # hypertables: TimescaleDB's own chunks and jobs
async def test_writer_maintains_partitions_ahead_and_drops_expired(migrated_db):
    today = query(migrated_db, "SELECT (now() AT TIME ZONE 'UTC')::date")[0][0]
    old = today - timedelta(days=40)
    query(migrated_db, "SELECT * FROM prediction_partitions_ensure(0, %s)", (old,))
    ahead = today + timedelta(days=10)

    def exists(name: str) -> bool:
        return query(migrated_db, "SELECT to_regclass(%s) IS NOT NULL", (name,))[0][0]

    writer = PredictionWriter(migrated_db, instance="a", flush_interval=0.05, retention_days=30,
                              partitions_ahead=10, metrics=private_metrics())
    await writer.start()
    await eventually(lambda: exists(f"predictions_p{ahead:%Y%m%d}"), "partition 10 days ahead created")
    await writer.close()
    assert not exists(f"predictions_p{old:%Y%m%d}") and not exists(f"prediction_metrics_p{old:%Y%m%d}")
    assert exists(f"predictions_p{today:%Y%m%d}")


async def test_service_metrics_module_is_used_by_default(migrated_db):
    """With metrics=None the writer reports to prediction_service.metrics (contract names)."""
    from prediction_service import metrics as service_metrics
    from prometheus_client import REGISTRY

    before = REGISTRY.get_sample_value("prediction_service_db_rows_written_total") or 0
    writer = PredictionWriter(migrated_db, instance="a", flush_interval=0.05)
    await writer.start()
    for i in range(7):
        writer.submit(row(i))
    await writer.close()
    assert service_metrics is not None
    assert REGISTRY.get_sample_value("prediction_service_db_rows_written_total") == before + 7


async def test_committed_returns_once_the_rows_are_in_the_table_and_waiters_share_a_write(migrated_db):
    # A flush interval far longer than the test: only the waiters make the writer write.
    writer = PredictionWriter(migrated_db, instance="ack", flush_interval=3600, metrics=private_metrics())
    await writer.start()

    async def answer(i: int) -> tuple[bool, int]:
        writer.submit(row(i))
        ok = await writer.committed(10)
        # What a client that got this answer could read back from the database right now.
        return ok, int(query(migrated_db, "SELECT count(*) FROM predictions WHERE request_id = %s", (f"req-{i}",))[0][0])

    results = await asyncio.gather(*(answer(i) for i in range(200)))
    assert results == [(True, 1)] * 200
    assert writer.rows_written == 200
    assert await writer.committed(1) is True  # nothing pending: at once
    await writer.close()


async def test_committed_answers_false_at_once_in_an_outage_and_the_rows_arrive_later(postgres_factory):
    pg = postgres_factory()
    apply_migrations(pg.dsn())
    writer = PredictionWriter(pg.dsn(), instance="ack", flush_interval=0.05, metrics=private_metrics())
    await writer.start()
    writer.submit(row(0))
    assert await writer.committed(10) is True

    await asyncio.to_thread(pg.stop)
    writer.submit(row(1))
    # The first waiter learns of the outage from the failed write (not from its own timeout) ...
    started = time.monotonic()
    assert await writer.committed(30) is False
    assert time.monotonic() - started < 25
    # ... and once the outage is known, waiters do not wait at all.
    writer.submit(row(2))
    started = time.monotonic()
    assert await writer.committed(30) is False
    assert time.monotonic() - started < 1

    await asyncio.to_thread(pg.start)
    await eventually(lambda: writer.rows_written == 3, "the buffered rows written after the restart")
    assert request_ids(pg.dsn()) == [0, 1, 2]
    await writer.close()


async def test_committed_is_false_when_the_database_refuses_a_row(migrated_db):
    writer = PredictionWriter(migrated_db, instance="ack", flush_interval=3600, metrics=private_metrics())
    await writer.start()
    writer.submit(row(1))
    writer.submit({**row(2), "input": {"text": "nul\x00byte"}})  # refused by jsonb (\u0000)
    assert await writer.committed(10) is False
    assert writer.rows_written == 1 and writer.rows_dropped == 1
    await writer.close()
