"""prediction_app (migration 0005): the service's login may write and read prediction rows and run the
partition routines, and nothing else. Set up as the Docker stacks do it: the database image's
superuser owns and migrates the database (`python -m prediction_service migrate --app-role`)."""
from __future__ import annotations

import subprocess
import sys
import urllib.parse
from pathlib import Path

import psycopg2
import pytest

from harness.postgres import query
from prediction_service.storage import rollback_migrations
from prediction_service.storage.batch import Record, batch_statement, encode_rows, to_record

APP_PASSWORD = "app-role-test-password"
SERVICE = str(Path(__file__).resolve().parents[2] / "service")


def migrate_cli(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prediction_service", "migrate", "--app-role", "prediction_app"],
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": SERVICE, **env},
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def app_db(postgres, request):
    """A database owned and migrated by a superuser, with prediction_app enabled; (owner, app) DSNs."""
    name = "approle_" + "".join(c if c.isalnum() else "_" for c in request.node.name[:30]).lower()
    postgres.execute(f"CREATE DATABASE {name} OWNER {postgres.superuser}", dbname="postgres")
    owner = postgres.dsn(name, admin=True)
    proc = migrate_cli(PREDICTION_TIMESCALE_URL=owner, PREDICTION_APP_DB_PASSWORD=APP_PASSWORD)
    assert proc.returncode == 0, proc.stderr
    assert "role prediction_app may log in" in proc.stdout
    app = f"postgresql://prediction_app:{urllib.parse.quote(APP_PASSWORD)}@{postgres.host}:{postgres.port}/{name}"
    yield owner, app
    postgres.execute(f"DROP DATABASE {name} WITH (FORCE)", dbname="postgres")


def _refused(dsn: str, sql: str) -> str:
    with pytest.raises(psycopg2.Error) as err:
        query(dsn, sql)
    return str(err.value)


def test_the_service_role_writes_and_reads_prediction_rows(app_db):
    _, app = app_db
    rows, kept = encode_rows([_record()])
    assert kept
    query(app, batch_statement(rows, "instance-a"))
    assert query(app, "SELECT count(*) FROM predictions")[0][0] == 1
    assert query(app, "SELECT sum(requests) FROM prediction_metrics")[0][0] >= 1
    # The fallback's routines create and drop partitions with their owner's rights.
    query(app, "SELECT * FROM prediction_partitions_ensure(2)")
    query(app, "SELECT * FROM prediction_partitions_drop_older_than(INTERVAL '30 days')")


def test_the_service_role_can_change_nothing_else(app_db):
    owner, app = app_db
    assert query(owner, "SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles "
                        "WHERE rolname = 'prediction_app'") == [(False, False, False)]
    for sql in ("CREATE TABLE intruder (x int)", "DROP TABLE predictions", "DELETE FROM predictions",
                "UPDATE predictions SET model = 'x'", "TRUNCATE predictions", "DELETE FROM schema_migrations",
                "ALTER TABLE predictions ADD COLUMN x int", "SELECT * FROM pg_authid"):
        message = _refused(app, sql)
        assert "permission denied" in message or "must be owner" in message, (sql, message)


def test_rolling_back_0005_takes_the_rights_away(app_db):
    owner, app = app_db
    rollback_migrations(owner, 4)
    assert "permission denied" in _refused(app, "SELECT count(*) FROM predictions")


def test_migrate_refuses_an_app_role_without_its_password(postgres):
    proc = migrate_cli(PREDICTION_TIMESCALE_URL=postgres.dsn(admin=True))
    assert proc.returncode == 2
    assert "needs its password in PREDICTION_APP_DB_PASSWORD" in proc.stderr


def _record() -> Record:
    return to_record({"model": "iris", "model_version": "1", "request_id": "r1", "input": {"a": 1.0},
                      "output": "setosa", "latency_ms": 0.5})
