"""The SQL migrations: applied in order and recorded, idempotent, reversible, the same files for
every tool (psql here stands for docker-entrypoint-initdb.d and Ansible, which run them verbatim).
Every test that touches a database runs on TimescaleDB (hypertables) and on plain PostgreSQL (partitions)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from prediction_service.storage import (MIGRATIONS_DIR, apply_migrations, pending_migrations,
                                        rollback_migrations)
from prediction_service.storage.migrations import MigrationError, discover

from harness.postgres import query

PSQL = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")) / "psql"
UP_FILES = sorted(MIGRATIONS_DIR.glob("*.sql"))
ALL_FILES = UP_FILES + sorted((MIGRATIONS_DIR / "down").glob("*.sql"))
EXPECTED_VERSIONS = [1, 2, 3, 4, 5, 6]
RECORDED = [(1, "schema_migrations"), (2, "prediction_tables"), (3, "partition_maintenance"),
            (4, "compression"), (5, "application_role"), (6, "monitoring_role")]
NEXT = EXPECTED_VERSIONS[-1] + 1  # the version a test's extra file takes


def tables(dsn: str) -> set[str]:
    rows = query(dsn, "SELECT relname FROM pg_class JOIN pg_namespace n ON n.oid = relnamespace "
                      "WHERE nspname = 'public' AND relkind IN ('r', 'p') AND NOT relispartition")
    return {r[0] for r in rows}


def recorded(dsn: str) -> list[tuple[int, str]]:
    return query(dsn, "SELECT version, name FROM schema_migrations ORDER BY version")


def test_every_up_file_has_a_down_file_and_versions_are_contiguous():
    migrations = discover()
    assert [m.version for m in migrations] == EXPECTED_VERSIONS
    for m in migrations:
        assert m.down.is_file(), f"missing down file {m.down}"


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: str(p.relative_to(MIGRATIONS_DIR)))
def test_files_are_plain_sql_every_tool_can_run(path: Path):
    text = path.read_text()
    # psql meta-commands (\set, \connect, \i ...) would break psycopg2 and Ansible.
    assert not [line for line in text.splitlines() if line.lstrip().startswith("\\")]
    # A driver given an (empty) parameter list reads '%' as a placeholder (Ansible's modules may).
    assert "%" not in text
    # Transaction control would break the one-transaction-per-file rule of the runner.
    assert not re.search(r"^\s*(BEGIN|COMMIT|ROLLBACK)\s*;", text, re.I | re.M)


@pytest.mark.parametrize("path", UP_FILES, ids=lambda p: p.name)
def test_each_up_file_records_itself(path: Path):
    version, name = int(path.name[:4]), path.stem[5:]
    text = path.read_text()
    assert re.search(rf"INSERT INTO schema_migrations \(version, name\) VALUES \({version}, '{name}'\)\s*"
                     r"ON CONFLICT DO NOTHING;\s*$", text), f"{path.name} must end by recording itself"


def test_apply_in_order_records_each_and_second_run_applies_nothing(fresh_db):
    assert pending_migrations(fresh_db) == EXPECTED_VERSIONS
    assert apply_migrations(fresh_db) == EXPECTED_VERSIONS
    assert recorded(fresh_db) == RECORDED
    applied_at = query(fresh_db, "SELECT applied_at FROM schema_migrations ORDER BY version")
    assert applied_at == sorted(applied_at)
    assert {"schema_migrations", "predictions", "prediction_metrics"} <= tables(fresh_db)
    assert pending_migrations(fresh_db) == []
    assert apply_migrations(fresh_db) == []
    assert len(recorded(fresh_db)) == len(EXPECTED_VERSIONS)


def test_target_stops_at_a_version(fresh_db):
    assert apply_migrations(fresh_db, target=1) == [1]
    assert tables(fresh_db) == {"schema_migrations"}
    assert pending_migrations(fresh_db) == EXPECTED_VERSIONS[1:]
    assert apply_migrations(fresh_db) == EXPECTED_VERSIONS[1:]


def test_rollback_to_zero_then_migrate_again(fresh_db):
    apply_migrations(fresh_db)
    query(fresh_db, "INSERT INTO predictions (time, instance, model, model_version, input, output) "
                    "VALUES (now(), 'i', 'm', '1', '{}', '{}')")
    assert rollback_migrations(fresh_db, 1) == EXPECTED_VERSIONS[:0:-1]
    assert tables(fresh_db) == {"schema_migrations"}
    assert recorded(fresh_db) == [(1, "schema_migrations")]
    assert query(fresh_db, "SELECT count(*) FROM pg_proc WHERE proname LIKE 'prediction%'") == [(0,)]
    assert rollback_migrations(fresh_db, 0) == [1]
    assert tables(fresh_db) == set()
    assert rollback_migrations(fresh_db, 0) == []
    assert apply_migrations(fresh_db) == EXPECTED_VERSIONS
    assert query(fresh_db, "SELECT count(*) FROM predictions") == [(0,)]


def test_same_files_applied_by_psql_then_runner_sees_them_applied(fresh_db):
    """psql -f with ON_ERROR_STOP, as docker-entrypoint-initdb.d runs them; twice, as Ansible would."""
    for _ in range(2):
        for path in UP_FILES:
            result = subprocess.run([str(PSQL), "-X", "-v", "ON_ERROR_STOP=1", "-d", fresh_db, "-f", str(path)],
                                    capture_output=True, text=True)
            assert result.returncode == 0, result.stderr
    assert recorded(fresh_db) == RECORDED
    assert pending_migrations(fresh_db) == []
    assert apply_migrations(fresh_db) == []


def test_a_failing_file_leaves_earlier_ones_applied_and_itself_not_at_all(fresh_db, tmp_path):
    for m in discover():
        (tmp_path / m.up.name).write_text(m.up.read_text())
    (tmp_path / f"{NEXT:04d}_broken.sql").write_text(
        "CREATE TABLE half_done (x int);\nSELECT no_such_function();\n"
        f"INSERT INTO schema_migrations (version, name) VALUES ({NEXT}, 'broken') ON CONFLICT DO NOTHING;\n")
    with pytest.raises(MigrationError, match=f"{NEXT:04d}_broken.sql.*no_such_function"):
        apply_migrations(fresh_db, migrations_dir=tmp_path)
    assert [v for v, _ in recorded(fresh_db)] == EXPECTED_VERSIONS
    assert "half_done" not in tables(fresh_db)


def test_a_file_that_does_not_record_itself_is_an_error(fresh_db, tmp_path):
    for m in discover():
        (tmp_path / m.up.name).write_text(m.up.read_text())
    (tmp_path / f"{NEXT:04d}_silent.sql").write_text("CREATE TABLE silent (x int);\n")
    with pytest.raises(MigrationError, match=f"did not record version {NEXT}"):
        apply_migrations(fresh_db, migrations_dir=tmp_path)


def test_cli_migrate_status_rollback(fresh_db, repo_root, storage_mode):
    env = {**os.environ, "PYTHONPATH": str(repo_root / "service"), "PREDICTION_TIMESCALE_URL": fresh_db}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "prediction_service.storage", *args],
                              capture_output=True, text=True, env=env, cwd=repo_root)

    r = cli("migrate")
    assert r.returncode == 0, r.stderr
    assert f"applied {len(EXPECTED_VERSIONS)} migration(s): {', '.join(map(str, EXPECTED_VERSIONS))}" in r.stdout
    # the path chosen is reported
    assert {"timescaledb": "TimescaleDB hypertables with a 30-day retention policy",
            "partitions": "native daily range partitions"}[storage_mode] in r.stdout
    r = cli("status")
    assert r.stdout.splitlines() == [f"{v:04d}_{name}: applied" for v, name in RECORDED]
    r = cli("rollback", "--to", "1")
    undone = EXPECTED_VERSIONS[:0:-1]
    assert r.returncode == 0 and f"rolled back {len(undone)} migration(s): {', '.join(map(str, undone))}" in r.stdout
    assert "0002_prediction_tables: pending" in cli("status").stdout
    r = cli("migrate", "--dsn", fresh_db.replace("test-app-pw", "wrong-pw"))
    assert r.returncode == 1 and r.stderr.startswith("error:") and "password" in r.stderr
    assert "wrong-pw" not in r.stderr + r.stdout  # the secret is not echoed
    env.pop("PREDICTION_TIMESCALE_URL")
    r = cli("migrate")
    assert r.returncode == 2 and "PREDICTION_TIMESCALE_URL" in r.stderr
