"""playbooks/db-migrate.yml and db-rollback.yml (roles/timescaledb_schema) against real PostgreSQL.

The service's own migration files (service/migrations) are applied to a fresh database of the session
server of each storage mode (TimescaleDB preloaded: hypertables; plain: native partitions); the
rollback mechanics are also exercised with a small migration set written here that follows the same
contract (each up file records itself, each down file deletes its row), on the plain server only.
"""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS = ROOT / "service" / "migrations"


def schema_vars(server, dbname: str, **overrides) -> dict:
    return {
        "timescaledb_schema_login_host": server.host,
        "timescaledb_schema_login_port": server.port,
        "timescaledb_schema_login_user": server.app_user,
        "timescaledb_schema_login_password": server.app_password,
        "timescaledb_schema_database": dbname,
        **overrides,
    }


def dbname_of(dsn: str) -> str:
    return dsn.rsplit("/", 1)[1]


def ok(run):
    assert run.rc == 0, f"playbook failed: {run.failure_messages()}\n{run.stderr[-2000:]}"
    return run


def versions(server, db) -> list[int]:
    if not server.execute("SELECT to_regclass('schema_migrations') IS NOT NULL", dbname=db)[0][0]:
        return []
    return [r[0] for r in server.execute("SELECT version FROM schema_migrations ORDER BY 1", dbname=db)]


def relkind(server, db, name):
    rows = server.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", (name,), dbname=db)
    return rows[0][0] if rows else None


def service_versions() -> list[int]:
    return sorted(int(p.name.split("_", 1)[0]) for p in MIGRATIONS.glob("[0-9]*_*.sql"))


@pytest.fixture
def postgres(postgres_in_mode):
    """The session server of the test's storage mode (both modes unless a test pins one)."""
    return postgres_in_mode


# Tests of the role's mechanics, not of the storage: one mode is enough.
plain_only = pytest.mark.parametrize("storage_mode", ["partitions"])


# --- the service's migrations ------------------------------------------------------------------

def test_service_migrations_build_the_storage_of_the_mode_and_are_idempotent(postgres, fresh_db, playbook,
                                                                              storage_mode):
    db = dbname_of(fresh_db)
    run = ok(playbook("db-migrate.yml", schema_vars(postgres, db)))
    assert run.changed == len(service_versions()), run.stats
    assert versions(postgres, db) == service_versions()
    if storage_mode == "timescaledb":
        # Hypertables with their retention and compression jobs, created by the app role (trusted extension).
        for table in ("predictions", "prediction_metrics"):
            assert relkind(postgres, db, table) == "r"
        jobs = postgres.execute("SELECT hypertable_name, proc_name FROM timescaledb_information.jobs "
                                "WHERE hypertable_name IS NOT NULL ORDER BY 1, 2", dbname=db)
        assert jobs == [("prediction_metrics", "policy_compression"), ("prediction_metrics", "policy_retention"),
                        ("predictions", "policy_compression"), ("predictions", "policy_retention")]
    else:
        # The SQL chose native range partitioning, with a DEFAULT and daily partitions.
        for table in ("predictions", "prediction_metrics"):
            assert relkind(postgres, db, table) == "p"
            parts = [r[0] for r in postgres.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = %s::regclass ORDER BY 1", (table,), dbname=db)]
            assert f"{table}_default" in parts
            assert len([p for p in parts if p.startswith(f"{table}_p")]) >= 8, parts
    # Owned by the application role, as the service expects.
    assert postgres.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'predictions'", dbname=db)[0][0] \
        == postgres.app_user

    again = ok(playbook("db-migrate.yml", schema_vars(postgres, db)))
    assert again.changed == 0, again.stats


@plain_only
def test_check_mode_applies_nothing(postgres, fresh_db, playbook):
    db = dbname_of(fresh_db)
    run = ok(playbook("db-migrate.yml", schema_vars(postgres, db), check=True))
    assert run.changed == len(service_versions())
    assert relkind(postgres, db, "schema_migrations") is None
    assert relkind(postgres, db, "predictions") is None


@pytest.mark.skipif(not (MIGRATIONS / "down").is_dir()
                    or len(list((MIGRATIONS / "down").glob("[0-9]*_*.sql"))) < len(service_versions()),
                    reason="service/migrations/down/ does not have a down file for every up file yet")
def test_service_migrations_roll_back_and_forward(postgres, fresh_db, playbook, storage_mode):
    db = dbname_of(fresh_db)
    ok(playbook("db-migrate.yml", schema_vars(postgres, db)))
    ok(playbook("db-rollback.yml", schema_vars(postgres, db, timescaledb_schema_target_version=1)))
    assert versions(postgres, db) == [1]
    assert relkind(postgres, db, "predictions") is None
    ok(playbook("db-migrate.yml", schema_vars(postgres, db)))
    assert versions(postgres, db) == service_versions()
    assert relkind(postgres, db, "predictions") == ("r" if storage_mode == "timescaledb" else "p")


# --- rollback mechanics with a migration set of our own ----------------------------------------

UP = {
    1: "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
       " applied_at timestamptz NOT NULL DEFAULT now());\n"
       "INSERT INTO schema_migrations (version, name) VALUES (1, 'base') ON CONFLICT DO NOTHING;",
    2: "CREATE TABLE IF NOT EXISTS things (id int PRIMARY KEY);\n"
       "INSERT INTO schema_migrations (version, name) VALUES (2, 'things') ON CONFLICT DO NOTHING;",
    3: "CREATE TABLE IF NOT EXISTS more_things (id int PRIMARY KEY);\n"
       "INSERT INTO schema_migrations (version, name) VALUES (3, 'more_things') ON CONFLICT DO NOTHING;",
}
DOWN = {
    1: "DROP TABLE IF EXISTS schema_migrations;",
    2: "DROP TABLE IF EXISTS things;\nDELETE FROM schema_migrations WHERE version = 2;",
    3: "DROP TABLE IF EXISTS more_things;\nDELETE FROM schema_migrations WHERE version = 3;",
}
NAMES = {1: "base", 2: "things", 3: "more_things"}


@pytest.fixture
def own_migrations(tmp_path) -> Path:
    d = tmp_path / "migrations"
    (d / "down").mkdir(parents=True)
    for v, sql in UP.items():
        (d / f"{v:04d}_{NAMES[v]}.sql").write_text(sql + "\n")
    for v, sql in DOWN.items():
        (d / "down" / f"{v:04d}_{NAMES[v]}.sql").write_text(sql + "\n")
    return d


@plain_only
def test_rollback_to_a_version_and_forward_again(postgres, fresh_db, playbook, own_migrations):
    db = dbname_of(fresh_db)
    v = schema_vars(postgres, db, timescaledb_schema_migrations_dir=str(own_migrations))
    assert ok(playbook("db-migrate.yml", v)).changed == 3
    assert versions(postgres, db) == [1, 2, 3]

    run = ok(playbook("db-rollback.yml", {**v, "timescaledb_schema_target_version": 1}))
    assert run.changed == 2  # down 0003 then down 0002
    assert versions(postgres, db) == [1]
    assert relkind(postgres, db, "things") is None and relkind(postgres, db, "more_things") is None
    assert ok(playbook("db-rollback.yml", {**v, "timescaledb_schema_target_version": 1})).changed == 0

    # Forward to a given version, then to the latest.
    ok(playbook("db-migrate.yml", {**v, "timescaledb_schema_target_version": 2}))
    assert versions(postgres, db) == [1, 2]
    ok(playbook("db-migrate.yml", v))
    assert versions(postgres, db) == [1, 2, 3]

    # All the way down: version 0 drops the migrations table too.
    ok(playbook("db-rollback.yml", {**v, "timescaledb_schema_target_version": 0}))
    assert versions(postgres, db) == []


@plain_only
def test_migrate_never_goes_down_and_rollback_needs_a_target(postgres, fresh_db, playbook, own_migrations):
    db = dbname_of(fresh_db)
    v = schema_vars(postgres, db, timescaledb_schema_migrations_dir=str(own_migrations))
    ok(playbook("db-migrate.yml", v))
    run = playbook("db-migrate.yml", {**v, "timescaledb_schema_target_version": 1})
    assert run.rc != 0
    assert any("db-rollback.yml" in m for m in run.failure_messages()), run.failure_messages()
    assert versions(postgres, db) == [1, 2, 3]
    run = playbook("db-rollback.yml", v)
    assert run.rc != 0
    assert any("timescaledb_schema_target_version=N" in m for m in run.failure_messages())
    assert versions(postgres, db) == [1, 2, 3]


@plain_only
def test_a_failing_migration_stops_the_run(postgres, fresh_db, playbook, own_migrations):
    db = dbname_of(fresh_db)
    (own_migrations / "0002_things.sql").write_text("CREATE TABLE things (id int PRIMARY KEY, oops nosuchtype);\n")
    run = playbook("db-migrate.yml", schema_vars(postgres, db, timescaledb_schema_migrations_dir=str(own_migrations)))
    assert run.rc != 0
    assert any("nosuchtype" in m for m in run.failure_messages()), run.failure_messages()
    # 0001 stays applied, 0002 rolled back as a whole, 0003 never ran.
    assert versions(postgres, db) == [1]
    assert relkind(postgres, db, "things") is None and relkind(postgres, db, "more_things") is None


@plain_only
def test_missing_down_file_is_named(postgres, fresh_db, playbook, own_migrations):
    db = dbname_of(fresh_db)
    v = schema_vars(postgres, db, timescaledb_schema_migrations_dir=str(own_migrations))
    ok(playbook("db-migrate.yml", v))
    (own_migrations / "down" / "0003_more_things.sql").unlink()
    run = playbook("db-rollback.yml", {**v, "timescaledb_schema_target_version": 2})
    assert run.rc != 0
    assert any("0003_<name>.sql" in m for m in run.failure_messages()), run.failure_messages()
    assert versions(postgres, db) == [1, 2, 3]
