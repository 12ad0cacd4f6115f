"""prediction_monitor (migration 0006): the PostgreSQL exporter's login reads what monitoring needs
(pg_monitor: every session, setting and size; TimescaleDB's job and chunk views) and no prediction row.
Set up as the Docker stacks do it: the database image's superuser owns and migrates the database
(`python -m prediction_service migrate --monitor-role`)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest

from harness.postgres import query
from prediction_service.storage import rollback_migrations

PASSWORD = "monitor-role-test-password"
SERVICE = str(Path(__file__).resolve().parents[2] / "service")


def migrate_cli(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prediction_service", "migrate", "--monitor-role", "prediction_monitor"],
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": SERVICE, **env},
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def monitored_db(postgres, request):
    """A database owned and migrated by a superuser, prediction_monitor enabled; (owner, monitor) DSNs."""
    name = "monrole_" + "".join(c if c.isalnum() else "_" for c in request.node.name[:30]).lower()
    postgres.execute(f"CREATE DATABASE {name} OWNER {postgres.superuser}", dbname="postgres")
    owner = postgres.dsn(name, admin=True)
    proc = migrate_cli(PREDICTION_TIMESCALE_URL=owner, PREDICTION_MONITOR_DB_PASSWORD=PASSWORD)
    assert proc.returncode == 0, proc.stderr
    assert "role prediction_monitor may log in" in proc.stdout
    yield owner, f"postgresql://prediction_monitor:{PASSWORD}@{postgres.host}:{postgres.port}/{name}"
    postgres.execute(f"DROP DATABASE {name} WITH (FORCE)", dbname="postgres")


def test_the_monitoring_role_is_pg_monitor_and_nothing_more(monitored_db):
    owner, _ = monitored_db
    assert query(owner, "SELECT rolsuper, rolcreaterole, rolcreatedb, rolcanlogin FROM pg_roles "
                        "WHERE rolname = 'prediction_monitor'") == [(False, False, False, True)]
    assert query(owner, "SELECT array_agg(b.rolname ORDER BY b.rolname) FROM pg_auth_members m "
                        "JOIN pg_roles r ON r.oid = m.member JOIN pg_roles b ON b.oid = m.roleid "
                        "WHERE r.rolname = 'prediction_monitor'") == [(["pg_monitor"],)]


def test_it_sees_every_session_and_setting(monitored_db, postgres):
    _, monitor = monitored_db
    # A session of another role: pg_monitor shows its query, not "<insufficient privilege>".
    other = psycopg2.connect(postgres.dsn(admin=True))
    try:
        with other.cursor() as cur:
            cur.execute("SELECT 'visible to pg_monitor'")
        seen = query(monitor, "SELECT count(*) FROM pg_stat_activity WHERE usename = %s "
                              "AND position('visible to pg_monitor' in query) > 0", (postgres.superuser,))
        assert seen == [(1,)]
    finally:
        other.close()
    assert query(monitor, "SELECT setting FROM pg_settings WHERE name = 'data_directory'")[0][0]  # superuser-only otherwise
    assert query(monitor, "SELECT pg_database_size(current_database()) > 0") == [(True,)]


@pytest.mark.parametrize("storage_mode", ["timescaledb"])
def test_it_reads_timescaledb_jobs_and_sizes(monitored_db):
    _, monitor = monitored_db
    jobs = query(monitor, "SELECT count(*) FROM timescaledb_information.jobs WHERE hypertable_name IS NOT NULL")
    assert jobs == [(4,)]
    query(monitor, "SELECT count(*) FROM timescaledb_information.job_stats")
    sizes = query(monitor, "SELECT hypertable_name, (hypertable_detailed_size(format('%I.%I', hypertable_schema, "
                           "hypertable_name)::regclass)).total_bytes FROM timescaledb_information.hypertables "
                           "ORDER BY 1")
    assert [name for name, _ in sizes] == ["prediction_metrics", "predictions"]


def test_it_reads_no_prediction_rows_and_changes_nothing(monitored_db):
    _, monitor = monitored_db
    for sql in ("SELECT count(*) FROM predictions", "SELECT * FROM schema_migrations", "CREATE TABLE t (x int)",
                "INSERT INTO prediction_metrics (time, instance, model, model_version, requests, cache_hits) "
                "VALUES (now(), 'i', 'm', '1', 1, 0)", "SELECT * FROM pg_authid"):
        with pytest.raises(psycopg2.Error) as err:
            query(monitor, sql)
        assert "permission denied" in str(err.value), (sql, str(err.value))


def test_rolling_back_0006_takes_the_connection_away(monitored_db, postgres):
    owner, monitor = monitored_db
    postgres.execute(f"REVOKE CONNECT ON DATABASE {owner.rsplit('/', 1)[1]} FROM PUBLIC", dbname="postgres")
    query(monitor, "SELECT 1")
    rollback_migrations(owner, 5)
    with pytest.raises(psycopg2.OperationalError) as err:
        query(monitor, "SELECT 1")
    assert "permission denied for database" in str(err.value)


def test_migrate_refuses_a_monitor_role_without_its_password(postgres):
    proc = migrate_cli(PREDICTION_TIMESCALE_URL=postgres.dsn(admin=True))
    assert proc.returncode == 2
    assert "needs its password in PREDICTION_MONITOR_DB_PASSWORD" in proc.stderr
