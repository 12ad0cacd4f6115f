"""Native daily partitioning and its retention routine (the path taken here: no TimescaleDB), and
the TimescaleDB path as SQL: the branch the migration takes when the extension is usable."""
from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone

import psycopg2
import pytest

from prediction_service.storage import MIGRATIONS_DIR

from harness.postgres import query

PARENTS = ("predictions", "prediction_metrics")


def partitions(dsn: str, parent: str = "predictions") -> list[str]:
    rows = query(dsn, "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                      "WHERE i.inhparent = %s::regclass ORDER BY 1", (parent,))
    return [r[0] for r in rows]


def day_names(parent: str, first: date, count: int) -> list[str]:
    return [f"{parent}_p{(first + timedelta(days=i)):%Y%m%d}" for i in range(count)]


def insert_prediction(dsn: str, when: datetime, model: str = "m") -> None:
    query(dsn, "INSERT INTO predictions (time, instance, model, model_version, input, output) "
               "VALUES (%s, 'test', %s, '1', '{}', '{}')", (when, model))


def db_today(dsn: str) -> date:
    return query(dsn, "SELECT (now() AT TIME ZONE 'UTC')::date")[0][0]


def test_fallback_path_builds_partitioned_tables_with_default_and_upcoming_days(migrated_db):
    assert query(migrated_db, "SELECT prediction_storage_timescaledb_usable()") == [(False,)]
    today = db_today(migrated_db)
    for parent in PARENTS:
        kind = query(migrated_db, "SELECT relkind FROM pg_class WHERE oid = %s::regclass", (parent,))
        assert kind == [("p",)], f"{parent} is not range-partitioned"
        names = partitions(migrated_db, parent)
        assert f"{parent}_default" in names
        # today and the next 7 days (the migration ran today: the DB clock is the reference)
        assert set(day_names(parent, today, 8)) <= set(names)
    # a partition covers exactly one UTC day
    bound = query(migrated_db, "SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE relname = %s",
                  (f"predictions_p{today:%Y%m%d}",))[0][0]
    assert bound == (f"FOR VALUES FROM ('{today} 00:00:00+00') TO ('{today + timedelta(days=1)} 00:00:00+00')")


def test_same_columns_on_both_tables_as_the_service_writes(migrated_db):
    cols = query(migrated_db, "SELECT attname FROM pg_attribute WHERE attrelid = 'predictions'::regclass "
                              "AND attnum > 0 AND NOT attisdropped ORDER BY attnum")
    assert [c[0] for c in cols] == ["time", "instance", "model", "model_version", "request_id", "input",
                                    "output", "latency_ms", "cache_hit"]
    cols = query(migrated_db, "SELECT attname FROM pg_attribute WHERE attrelid = 'prediction_metrics'::regclass "
                              "AND attnum > 0 AND NOT attisdropped ORDER BY attnum")
    assert [c[0] for c in cols] == ["time", "instance", "model", "model_version", "requests", "cache_hits",
                                    "latency_ms_avg", "latency_ms_max"]


def test_rows_of_any_day_are_accepted_and_land_in_their_partition(migrated_db):
    now = datetime.now(timezone.utc)
    insert_prediction(migrated_db, now)
    insert_prediction(migrated_db, datetime(2001, 1, 1, tzinfo=timezone.utc))  # no partition: DEFAULT
    rows = query(migrated_db, "SELECT tableoid::regclass::text, time FROM predictions ORDER BY time")
    assert rows[0][0] == "predictions_default"
    assert rows[1][0] in (f"predictions_p{now:%Y%m%d}", f"predictions_p{db_today(migrated_db):%Y%m%d}")
    # partition indexes exist (attached with the partition), so queries by model use them
    idx = query(migrated_db, "SELECT count(*) FROM pg_indexes WHERE tablename = %s", (rows[1][0],))
    assert idx == [(3,)]


def test_ensure_creates_past_days_and_moves_their_rows_out_of_default(migrated_db):
    old_day = date(2024, 2, 10)
    insert_prediction(migrated_db, datetime(2024, 2, 10, 23, 59, tzinfo=timezone.utc))
    insert_prediction(migrated_db, datetime(2024, 2, 11, 0, 0, tzinfo=timezone.utc))
    insert_prediction(migrated_db, datetime(2024, 3, 1, tzinfo=timezone.utc))
    created = [r[0] for r in query(migrated_db, "SELECT * FROM prediction_partitions_ensure(1, %s)", (old_day,))]
    assert sorted(created) == sorted(day_names("predictions", old_day, 2) + day_names("prediction_metrics", old_day, 2))
    where = dict(query(migrated_db, "SELECT time::date::text, tableoid::regclass::text FROM predictions"))
    assert where == {"2024-02-10": "predictions_p20240210", "2024-02-11": "predictions_p20240211",
                     "2024-03-01": "predictions_default"}
    # second call: nothing left to create
    assert query(migrated_db, "SELECT * FROM prediction_partitions_ensure(1, %s)", (old_day,)) == []


def test_retention_drops_only_partitions_wholly_older_than_retention(migrated_db):
    reference = datetime(2024, 3, 15, 12, 0, tzinfo=timezone.utc)  # cutoff: 2024-02-14 12:00 UTC
    first = date(2024, 2, 1)
    query(migrated_db, "SELECT * FROM prediction_partitions_ensure(20, %s)", (first,))  # 02-01 .. 02-21
    for day in range(1, 22):
        insert_prediction(migrated_db, datetime(2024, 2, day, 6, tzinfo=timezone.utc))
    insert_prediction(migrated_db, datetime(2024, 1, 5, tzinfo=timezone.utc))   # DEFAULT, expired
    insert_prediction(migrated_db, datetime(2024, 3, 10, tzinfo=timezone.utc))  # DEFAULT, kept
    before_pred = set(partitions(migrated_db, "predictions"))

    dropped = [r[0] for r in query(migrated_db, "SELECT * FROM prediction_partitions_drop_older_than("
                                                "INTERVAL '30 days', %s)", (reference,))]

    # 02-01 .. 02-13 end at or before the cutoff; 02-14 ends after it (it holds rows newer than
    # the cutoff), so it stays whole.
    expected = day_names("predictions", first, 13) + day_names("prediction_metrics", first, 13)
    assert sorted(dropped) == sorted(expected)
    after_pred = set(partitions(migrated_db, "predictions"))
    assert before_pred - after_pred == set(day_names("predictions", first, 13))
    assert {"predictions_p20240214", "predictions_p20240221", "predictions_default"} <= after_pred
    days = [r[0] for r in query(migrated_db, "SELECT time::date FROM predictions ORDER BY time")]
    assert days == [date(2024, 2, d) for d in range(14, 22)] + [date(2024, 3, 10)]
    # running it again changes nothing
    assert query(migrated_db, "SELECT * FROM prediction_partitions_drop_older_than(INTERVAL '30 days', %s)",
                 (reference,)) == []


def test_retention_never_drops_today_even_with_zero_retention(migrated_db):
    today = db_today(migrated_db)
    yesterday = today - timedelta(days=1)
    query(migrated_db, "SELECT * FROM prediction_partitions_ensure(0, %s)", (yesterday,))
    insert_prediction(migrated_db, datetime.now(timezone.utc))
    dropped = [r[0] for r in query(migrated_db, "SELECT * FROM prediction_partitions_drop_older_than("
                                                "INTERVAL '0 days', now() + INTERVAL '10 days')")]
    assert f"predictions_p{yesterday:%Y%m%d}" in dropped
    today = db_today(migrated_db)  # read again: the test may have crossed midnight
    names = partitions(migrated_db, "predictions")
    assert f"predictions_p{today:%Y%m%d}" in names and f"predictions_p{today + timedelta(days=1):%Y%m%d}" in names
    assert query(migrated_db, "SELECT count(*) FROM predictions") == [(1,)]


def test_routines_reject_bad_arguments_with_a_clear_message(migrated_db):
    with pytest.raises(psycopg2.errors.RaiseException, match="retention must be zero or more"):
        query(migrated_db, "SELECT * FROM prediction_partitions_drop_older_than(INTERVAL '-1 day')")
    with pytest.raises(psycopg2.errors.RaiseException, match="days_ahead must be 0 or more"):
        query(migrated_db, "SELECT * FROM prediction_partitions_ensure(-1)")


def test_detection_runs_for_the_app_user_and_a_superuser(postgres, migrated_db):
    """shared_preload_libraries is superuser-only: the app user takes the other branch of the check."""
    dbname = migrated_db.rsplit("/", 1)[1]
    assert query(migrated_db, "SELECT prediction_storage_timescaledb_usable()") == [(False,)]
    assert postgres.execute("SELECT prediction_storage_timescaledb_usable()", dbname=dbname) == [(False,)]
    # The fallback is taken when TimescaleDB is absent or merely installed: this server does not preload it.
    preload = postgres.execute("SHOW shared_preload_libraries", dbname=dbname)[0][0]
    assert "timescaledb" not in preload


# --- The TimescaleDB path, as SQL (no TimescaleDB package on this machine) ------------------------

TABLES_SQL = (MIGRATIONS_DIR / "0002_prediction_tables.sql").read_text()


def _branches() -> tuple[str, str]:
    """The THEN and the ELSE parts of the blocks that choose between hypertables and partitions."""
    body = TABLES_SQL[TABLES_SQL.index("DO $do$"):TABLES_SQL.index("$do$;")]
    thens, elses = [], []
    for m in re.finditer(r"^    IF use_timescaledb THEN\n(.*?)^    END IF;", body, re.M | re.S):
        then, _, otherwise = m.group(1).partition("\n    ELSE\n")
        thens.append(then)
        elses.append(otherwise)
    assert len(thens) == 2
    return "\n".join(thens), "\n".join(elses)


def test_timescaledb_branch_creates_hypertables_and_30_day_retention():
    then, otherwise = _branches()
    assert "CREATE EXTENSION IF NOT EXISTS timescaledb" in then
    for table in PARENTS:
        assert re.search(rf"create_hypertable\('{table}', 'time',", then)
        assert f"add_retention_policy('{table}', INTERVAL '30 days', if_not_exists => true)" in then
        assert f"PARTITION OF {table} DEFAULT" in otherwise
    assert "create_hypertable" not in otherwise and "timescaledb" not in otherwise.replace(
        "timescaledb not available", "")
    # the column list is written once and only the storage clause differs
    assert TABLES_SQL.count("CREATE TABLE IF NOT EXISTS predictions (") == 1
    assert "THEN '' ELSE ' PARTITION BY RANGE (time)' END" in TABLES_SQL


def test_timescaledb_is_chosen_when_installed_or_available_and_preloaded():
    detect = TABLES_SQL[:TABLES_SQL.index("DO $do$")]
    assert "FROM pg_extension WHERE extname = 'timescaledb'" in detect
    assert "FROM pg_available_extensions WHERE name = 'timescaledb'" in detect
    assert "current_setting('shared_preload_libraries')" in detect
    # a re-run keeps what the first run built (a natively partitioned table is not converted)
    assert "WHEN existing_kind = 'p' THEN false" in TABLES_SQL


def test_maintenance_routines_are_no_ops_on_hypertables(migrated_db):
    """The routines act on relkind 'p' tables only; a plain (hypertable-like) table is left alone."""
    maintenance = (MIGRATIONS_DIR / "0003_partition_maintenance.sql").read_text()
    assert maintenance.count("AND relkind = 'p');") == 2
    query(migrated_db, "DROP TABLE predictions, prediction_metrics")
    query(migrated_db, "CREATE TABLE predictions (time timestamptz NOT NULL); "
                       "CREATE TABLE prediction_metrics (time timestamptz NOT NULL)")
    assert query(migrated_db, "SELECT * FROM prediction_partitions_ensure(3)") == []
    assert query(migrated_db, "SELECT * FROM prediction_partitions_drop_older_than(INTERVAL '0 days')") == []
