"""The TimescaleDB path for real: hypertables, chunk interval, the 30-day retention job, the
compression policy, migrations down and up with compressed chunks, late rows into compressed chunks.
On a machine without TimescaleDB these skip (fail under CI=true); see tests/conftest.py."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from prediction_service.storage import apply_migrations, rollback_migrations
from prediction_service.storage.batch import batch_statement, encode_rows, to_record

from harness.postgres import query

pytestmark = pytest.mark.parametrize("storage_mode", ["timescaledb"])
TABLES = ("predictions", "prediction_metrics")


def write_batch(dsn: str, rows: list[dict], instance: str = "node-a") -> None:
    """The writer's own statement: the rows and their per-second aggregates, one batch."""
    encoded, kept = encode_rows([to_record(r) for r in rows])
    assert len(kept) == len(rows)
    query(dsn, batch_statement(encoded, instance))


def rows_at(when: datetime, n: int = 3, model: str = "iris") -> list[dict]:
    return [{"time": when + timedelta(milliseconds=i), "model": model, "model_version": "1",
             "request_id": f"{when:%m%d%H%M}-{i}", "input": {"sepal_length": 5.1 + i / 10},
             "output": {"label": "setosa", "probabilities": {"setosa": 1.0}}, "latency_ms": 1.5,
             "cache_hit": i % 2 == 0} for i in range(n)]


def job_id(dsn: str, proc: str, table: str) -> int:
    [(jid,)] = query(dsn, "SELECT job_id FROM timescaledb_information.jobs "
                          "WHERE proc_name = %s AND hypertable_name = %s", (proc, table))
    return jid


def content(dsn: str, table: str) -> tuple[int, str]:
    """Row count and a checksum of every row, in a stable order."""
    return tuple(query(dsn, f"SELECT count(*), coalesce(md5(string_agg(x::text, '|' ORDER BY x::text)), '') "
                            f"FROM {table} x")[0])


def chunks(dsn: str, table: str) -> list[tuple[datetime, bool]]:
    """(range start, is_compressed) of every chunk, oldest first."""
    return query(dsn, "SELECT range_start, is_compressed FROM timescaledb_information.chunks "
                      "WHERE hypertable_name = %s ORDER BY range_start", (table,))


def now_utc(dsn: str) -> datetime:
    return query(dsn, "SELECT now()")[0][0]


def test_both_tables_are_hypertables_with_daily_chunks_and_our_indexes(migrated_db):
    got = query(migrated_db, "SELECT hypertable_name, column_name, time_interval FROM "
                             "timescaledb_information.dimensions ORDER BY 1")
    assert got == [("prediction_metrics", "time", timedelta(days=1)), ("predictions", "time", timedelta(days=1))]
    assert query(migrated_db, "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'") == [("2.17.2",)]
    # create_default_indexes => false: only the migration's own indexes, copied to every chunk.
    write_batch(migrated_db, rows_at(now_utc(migrated_db)))
    [(chunk,)] = query(migrated_db, "SELECT format('%I.%I', chunk_schema, chunk_name) FROM "
                                    "timescaledb_information.chunks WHERE hypertable_name = 'predictions'")
    idx = query(migrated_db, "SELECT count(*) FROM pg_indexes WHERE schemaname || '.' || tablename = %s", (chunk,))
    assert idx == [(3,)]


def test_retention_job_drops_rows_older_than_30_days_and_keeps_the_rest(migrated_db):
    now = now_utc(migrated_db)
    expired, kept = now - timedelta(days=31, hours=1), now - timedelta(days=29)
    for when in (now - timedelta(days=45), expired, kept, now):
        write_batch(migrated_db, rows_at(when))
    assert query(migrated_db, "SELECT count(*) FROM predictions") == [(12,)]
    policies = query(migrated_db, "SELECT hypertable_name, config->>'drop_after', schedule_interval FROM "
                                  "timescaledb_information.jobs WHERE proc_name = 'policy_retention' ORDER BY 1")
    assert policies == [("prediction_metrics", "30 days", timedelta(days=1)),
                        ("predictions", "30 days", timedelta(days=1))]

    for table in TABLES:
        query(migrated_db, f"CALL run_job({job_id(migrated_db, 'policy_retention', table)})")

    oldest = query(migrated_db, "SELECT min(time) FROM predictions")[0][0]
    assert oldest >= kept.replace(microsecond=0) - timedelta(seconds=1), oldest
    assert query(migrated_db, "SELECT count(*) FROM predictions") == [(6,)]  # the 29-day-old and today's
    assert query(migrated_db, "SELECT min(time) >= %s FROM prediction_metrics", (kept - timedelta(seconds=1),)) \
        == [(True,)]
    # Whole chunks went (no row-by-row DELETE): none of them starts before the cutoff's day any more.
    for table in TABLES:
        assert all(start > expired - timedelta(days=1) for start, _ in chunks(migrated_db, table))


def test_compression_policy_compresses_chunks_older_than_3_days_only(migrated_db):
    now = now_utc(migrated_db)
    for days in (5, 4, 1, 0):
        write_batch(migrated_db, rows_at(now - timedelta(days=days), n=500))
    before = {t: content(migrated_db, t) for t in TABLES}
    size_before = query(migrated_db, "SELECT hypertable_size('predictions')")[0][0]
    policies = query(migrated_db, "SELECT hypertable_name, config->>'compress_after' FROM "
                                  "timescaledb_information.jobs WHERE proc_name = 'policy_compression' ORDER BY 1")
    assert policies == [("prediction_metrics", "3 days"), ("predictions", "3 days")]

    for table in TABLES:
        query(migrated_db, f"CALL run_job({job_id(migrated_db, 'policy_compression', table)})")

    for table in TABLES:
        state = chunks(migrated_db, table)
        assert [compressed for _, compressed in state] == [True, True, False, False], (table, state)
        # Same rows, read back through the compressed chunks.
        assert content(migrated_db, table) == before[table]
    settings = query(migrated_db, "SELECT hypertable::text, segmentby, orderby FROM timescaledb_information."
                                  "hypertable_compression_settings ORDER BY 1")
    assert settings == [("prediction_metrics", "model,model_version,instance", "\"time\" DESC"),
                        ("predictions", "model,model_version", "\"time\" DESC")]
    size_after = query(migrated_db, "SELECT hypertable_size('predictions')")[0][0]
    assert size_after < size_before, (size_before, size_after)


def test_late_rows_go_into_a_compressed_chunk_and_are_read_back(migrated_db):
    """The writer's backlog after an outage may carry rows of an already compressed day."""
    old_day = now_utc(migrated_db) - timedelta(days=6)
    write_batch(migrated_db, rows_at(old_day, n=100))
    query(migrated_db, f"CALL run_job({job_id(migrated_db, 'policy_compression', 'predictions')})")
    assert [c for _, c in chunks(migrated_db, "predictions")] == [True]

    write_batch(migrated_db, rows_at(old_day + timedelta(minutes=5), n=7, model="late"))
    assert query(migrated_db, "SELECT count(*) FROM predictions WHERE model = 'late'") == [(7,)]
    assert query(migrated_db, "SELECT sum(requests) FROM prediction_metrics WHERE model = 'late'") == [(7,)]
    assert query(migrated_db, "SELECT count(*) FROM predictions") == [(107,)]


def test_rollback_decompresses_and_forward_again_keeps_every_row(migrated_db):
    now = now_utc(migrated_db)
    for days in (6, 5, 0):
        write_batch(migrated_db, rows_at(now - timedelta(days=days), n=50))
    for table in TABLES:
        query(migrated_db, f"CALL run_job({job_id(migrated_db, 'policy_compression', table)})")
    before = {t: content(migrated_db, t) for t in TABLES}

    assert rollback_migrations(migrated_db, 3) == [6, 5, 4]
    for table in TABLES:
        assert not any(c for _, c in chunks(migrated_db, table))
        assert content(migrated_db, table) == before[table]
    assert query(migrated_db, "SELECT count(*) FROM timescaledb_information.jobs "
                              "WHERE proc_name = 'policy_compression'") == [(0,)]
    assert query(migrated_db, "SELECT bool_or(compression_enabled) FROM timescaledb_information.hypertables") \
        == [(False,)]

    assert apply_migrations(migrated_db) == [4, 5, 6]
    assert query(migrated_db, "SELECT count(*) FROM timescaledb_information.jobs "
                              "WHERE proc_name = 'policy_compression'") == [(2,)]

    # All the way down: the hypertables, their chunks and every policy job go; the extension stays.
    assert rollback_migrations(migrated_db, 1) == [6, 5, 4, 3, 2]
    assert query(migrated_db, "SELECT count(*) FROM timescaledb_information.hypertables") == [(0,)]
    assert query(migrated_db, "SELECT count(*) FROM timescaledb_information.jobs WHERE hypertable_name IS NOT NULL") \
        == [(0,)]
    assert apply_migrations(migrated_db) == [2, 3, 4, 5, 6]
    assert query(migrated_db, "SELECT count(*) FROM timescaledb_information.jobs WHERE hypertable_name IS NOT NULL") \
        == [(4,)]


def test_migrations_applied_again_keep_compressed_chunks_and_settings(migrated_db, tmp_path):
    """psql -f and Ansible may re-apply every file: 0004 must not try to change compressed hypertables."""
    write_batch(migrated_db, rows_at(now_utc(migrated_db) - timedelta(days=6)))
    query(migrated_db, f"CALL run_job({job_id(migrated_db, 'policy_compression', 'predictions')})")
    from prediction_service.storage.migrations import discover
    for m in discover():
        query(migrated_db, m.up.read_text())
    assert [c for _, c in chunks(migrated_db, "predictions")] == [True]
    assert query(migrated_db, "SELECT count(*) FROM timescaledb_information.jobs WHERE hypertable_name IS NOT NULL") \
        == [(4,)]
