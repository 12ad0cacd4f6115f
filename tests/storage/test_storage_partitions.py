"""Native daily partitioning and its retention routine: the fallback the migrations build when
TimescaleDB is absent or not preloaded. Tests of that path run on the plain server only; the
TimescaleDB path is tested for real in test_storage_timescaledb.py."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import psycopg2
import pytest

from prediction_service.storage import MIGRATIONS_DIR

from harness.postgres import query

PARENTS = ("predictions", "prediction_metrics")
# The fallback's own behaviour: only on the server without TimescaleDB preloaded.
fallback_only = pytest.mark.parametrize("storage_mode", ["partitions"])


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


@fallback_only
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


@fallback_only
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


@fallback_only
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


@fallback_only
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


@fallback_only
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


def test_detection_runs_for_the_app_user_and_a_superuser(postgres, migrated_db, storage_mode):
    """shared_preload_libraries is superuser-only: the app user takes the other branch of the check."""
    dbname = migrated_db.rsplit("/", 1)[1]
    usable = storage_mode == "timescaledb"
    assert query(migrated_db, "SELECT prediction_storage_timescaledb_usable()") == [(usable,)]
    assert postgres.execute("SELECT prediction_storage_timescaledb_usable()", dbname=dbname) == [(usable,)]
    # The fallback is taken when TimescaleDB is absent or merely installed: that server does not preload it.
    preload = postgres.execute("SHOW shared_preload_libraries", dbname=dbname)[0][0]
    assert ("timescaledb" in preload) == usable


def test_usable_in_a_database_without_the_extension_only_when_preloaded(postgres, fresh_db, storage_mode):
    """Before 0002 creates the extension, detection rests on 'available and preloaded' alone."""
    query(fresh_db, (MIGRATIONS_DIR / "0001_schema_migrations.sql").read_text())
    tables_sql = (MIGRATIONS_DIR / "0002_prediction_tables.sql").read_text()
    query(fresh_db, tables_sql[:tables_sql.index("DO $do$")])  # only the detection function
    assert query(fresh_db, "SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'") == [(0,)]
    assert query(fresh_db, "SELECT prediction_storage_timescaledb_usable()") == [(storage_mode == "timescaledb",)]


def test_maintenance_routines_act_only_on_native_partitions(migrated_db, storage_mode):
    """Called the same way in both modes (the writer does); on hypertables they leave all to TimescaleDB."""
    past = db_today(migrated_db) - timedelta(days=10)
    created = [r[0] for r in query(migrated_db, "SELECT * FROM prediction_partitions_ensure(1, %s)", (past,))]
    dropped = [r[0] for r in query(migrated_db, "SELECT * FROM prediction_partitions_drop_older_than("
                                                "INTERVAL '5 days')")]
    if storage_mode == "timescaledb":
        assert created == [] and dropped == []
        assert query(migrated_db, "SELECT relkind FROM pg_class WHERE relname = 'predictions'") == [("r",)]
    else:
        assert sorted(created) == sorted(day_names("predictions", past, 2) + day_names("prediction_metrics", past, 2))
        assert sorted(dropped) == sorted(created)
