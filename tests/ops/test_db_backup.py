"""playbooks/backup.yml and restore.yml (roles/db_backup, roles/db_restore) against real PostgreSQL,
with TimescaleDB (hypertables over several chunks, some compressed, their policy jobs) and without it
(native partitions).

backup -> damage the data -> restore: every table's rows equal the manifest and its content checksum
equals the one taken before the backup. Rotation, tampering and missing files fail with clear messages.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import psycopg2
import pytest

DAY = 86400


@pytest.fixture
def postgres(postgres_in_mode):
    """The session server of the test's storage mode (both modes unless a test pins one)."""
    return postgres_in_mode


# Tests of the roles' file handling, not of the storage: one mode is enough.
plain_only = pytest.mark.parametrize("storage_mode", ["partitions"])


def conn_vars(server, dbname: str, backup_dir: Path, **overrides) -> dict:
    common = {"login_host": server.host, "login_port": server.port,
              "login_user": server.app_user, "login_password": server.app_password}
    v = {f"db_backup_{k}": val for k, val in common.items()}
    v.update({f"db_restore_{k}": val for k, val in common.items()})
    v.update(db_backup_database=dbname, db_restore_database=dbname,
             db_backup_dir=str(backup_dir), db_restore_dir=str(backup_dir))
    if server.timescaledb:  # TimescaleDB's restore mode needs a superuser (the app role is not one)
        v.update(db_restore_admin_login_user=server.superuser,
                 db_restore_admin_login_password=server.superuser_password)
    v.update(overrides)
    return v


def schema_vars(server, dbname: str) -> dict:
    return {"timescaledb_schema_login_host": server.host, "timescaledb_schema_login_port": server.port,
            "timescaledb_schema_login_user": server.app_user,
            "timescaledb_schema_login_password": server.app_password, "timescaledb_schema_database": dbname}


def ok(run):
    assert run.rc == 0, f"playbook failed: {run.failure_messages()}\n{run.stderr[-2000:]}"
    return run


def user_tables(server, db) -> list[str]:
    return [r[0] for r in server.execute(
        "SELECT schemaname || '.' || tablename FROM pg_tables t JOIN pg_class c ON c.oid = "
        "(quote_ident(schemaname) || '.' || quote_ident(tablename))::regclass "
        "WHERE schemaname = 'public' AND NOT c.relispartition "
        "UNION SELECT 'public.' || relname FROM pg_class WHERE relkind = 'p' AND NOT relispartition "
        "AND relnamespace = 'public'::regnamespace ORDER BY 1", dbname=db)]


def snapshot(server, db) -> dict[str, tuple[int, str]]:
    """table -> (rows, md5 of all rows in a stable order): what a restore must bring back."""
    out = {}
    for t in user_tables(server, db):
        out[t] = tuple(server.execute(
            f"SELECT count(*), coalesce(md5(string_agg(x::text, '|' ORDER BY x::text)), '') FROM {t} x",
            dbname=db)[0])
    return out


def timescaledb_objects(server, db) -> dict:
    """What a TimescaleDB restore must bring back besides the rows: hypertables, chunks, jobs."""
    return {
        "hypertables": server.execute(
            "SELECT hypertable_name, num_dimensions, compression_enabled FROM timescaledb_information.hypertables "
            "ORDER BY 1", dbname=db),
        "chunks": server.execute(
            "SELECT hypertable_name, range_start, range_end, is_compressed FROM timescaledb_information.chunks "
            "ORDER BY 1, 2", dbname=db),
        "jobs": server.execute(
            "SELECT hypertable_name, proc_name, schedule_interval, config::text, scheduled "
            "FROM timescaledb_information.jobs WHERE hypertable_name IS NOT NULL ORDER BY 1, 2", dbname=db),
    }


@pytest.fixture
def loaded_db(postgres, fresh_db, playbook, storage_mode):
    """A fresh database with the service's schema and rows spread over 11 days: partitions (incl.
    DEFAULT) without TimescaleDB; with it, daily chunks of which the ones older than 3 days are
    compressed by the policy's own job."""
    db = fresh_db.rsplit("/", 1)[1]
    ok(playbook("db-migrate.yml", schema_vars(postgres, db)))
    postgres.execute(
        "INSERT INTO predictions (time, instance, model, model_version, request_id, input, output, latency_ms, cache_hit) "
        "SELECT now() - (i * interval '37 minutes'), 'i' || (i % 3), 'iris', '1', 'r' || i, "
        "jsonb_build_object('x', i), jsonb_build_object('y', i % 3), i / 10.0, i % 4 = 0 "
        "FROM generate_series(1, 400) i", dbname=db)
    postgres.execute(
        "INSERT INTO prediction_metrics SELECT now() - i * interval '1 hour', 'i1', 'iris', '1', i, i / 2, 1.5, 3.0 "
        "FROM generate_series(1, 120) i", dbname=db)
    if storage_mode == "timescaledb":
        for (job,) in postgres.execute("SELECT job_id FROM timescaledb_information.jobs "
                                       "WHERE proc_name = 'policy_compression'", dbname=db):
            postgres.execute(f"CALL run_job({job})", dbname=db)
        state = timescaledb_objects(postgres, db)
        assert sum(1 for c in state["chunks"] if c[3]) >= 8 and sum(1 for c in state["chunks"] if not c[3]) >= 3
    return db


def test_the_backups_timestamp_is_taken_once():
    """The dump's and the manifest's names share one stamp: set_fact evaluates now() once, first; a role
    variable holding now() is templated again at every use (and a second may pass between two)."""
    import yaml

    role = Path(__file__).resolve().parents[2] / "roles/db_backup"
    first = yaml.safe_load((role / "tasks/main.yml").read_text())[0]
    assert "now(" in first["ansible.builtin.set_fact"]["_db_backup_stamp"], first
    for folder in ("vars", "defaults"):
        for path in (role / folder).glob("*.yml"):
            assert "now(" not in "".join(line.split("#", 1)[0] for line in path.read_text().splitlines()), \
                f"{path}: a variable holding now() is evaluated at each use; set it once with set_fact"


def manifests(backup_dir: Path) -> list[Path]:
    return sorted(backup_dir.glob("*.manifest.json"))


def test_backup_then_restore_brings_every_row_back(postgres, loaded_db, playbook, tmp_path, storage_mode):
    db, bdir = loaded_db, tmp_path / "backups"
    before = snapshot(postgres, db)
    objects = timescaledb_objects(postgres, db) if storage_mode == "timescaledb" else None
    ok(playbook("backup.yml", conn_vars(postgres, db, bdir)))

    [manifest_path] = manifests(bdir)
    dump = bdir / json.loads(manifest_path.read_text())["file"]
    manifest = json.loads(manifest_path.read_text())
    assert dump.name.startswith(f"{db}_") and dump.suffix == ".dump" and dump.exists()
    assert not list(bdir.glob("*.partial"))
    assert manifest["size_bytes"] == dump.stat().st_size
    assert len(manifest["sha256"]) == 64
    # Parent tables only, counted exactly.
    assert manifest["row_counts"] == {t: rows for t, (rows, _) in before.items()}
    assert manifest["row_counts"]["public.predictions"] == 400

    # Damage: delete, update, insert, drop a whole table.
    postgres.execute("DELETE FROM predictions WHERE latency_ms > 20", dbname=db)
    postgres.execute("UPDATE predictions SET model = 'evil' WHERE cache_hit", dbname=db)
    postgres.execute("INSERT INTO schema_migrations VALUES (999, 'bogus')", dbname=db)
    postgres.execute("DROP TABLE prediction_metrics", dbname=db)
    assert snapshot(postgres, db) != before

    run = ok(playbook("restore.yml", conn_vars(postgres, db, bdir)))
    assert run.changed >= 1
    after = snapshot(postgres, db)
    assert after == before, {t: (before.get(t), after.get(t)) for t in set(before) | set(after)
                             if before.get(t) != after.get(t)}
    if storage_mode == "timescaledb":
        # The hypertables, every chunk (compressed ones still compressed), the policies and their jobs.
        assert timescaledb_objects(postgres, db) == objects
        assert postgres.execute("SHOW timescaledb.restoring", dbname=db) == [("off",)]
    else:
        # The partitions came back too.
        assert postgres.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = 'predictions'::regclass",
                                dbname=db)[0][0] >= 9


def test_manifest_counts_match_the_dump_while_the_service_writes(postgres, loaded_db, playbook, tmp_path):
    """Counts come from the dump's own snapshot, so a writer during the backup cannot skew them."""
    db, bdir = loaded_db, tmp_path / "backups"
    stop = threading.Event()

    def writer():
        conn = psycopg2.connect(postgres.dsn(db))
        conn.autocommit = True
        with conn.cursor() as cur:
            while not stop.is_set():
                cur.execute("INSERT INTO predictions (time, instance, model, model_version, input, output) "
                            "VALUES (now(), 'w', 'iris', '1', '{}', '{}')")
                time.sleep(0.005)
        conn.close()

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        ok(playbook("backup.yml", conn_vars(postgres, db, bdir)))
    finally:
        stop.set()
        t.join()
    written = postgres.execute("SELECT count(*) FROM predictions", dbname=db)[0][0]
    [manifest_path] = manifests(bdir)
    in_dump = json.loads(manifest_path.read_text())["row_counts"]["public.predictions"]
    assert 400 <= in_dump < written, (in_dump, written)
    # The restore checks the restored counts against the manifest: it passes only if they agree.
    ok(playbook("restore.yml", conn_vars(postgres, db, bdir)))
    assert postgres.execute("SELECT count(*) FROM predictions", dbname=db)[0][0] == in_dump


def plant(bdir: Path, db: str, name: str, age_days: float) -> Path:
    dump = bdir / f"{db}_{name}.dump"
    dump.write_bytes(b"old dump")
    (bdir / f"{db}_{name}.manifest.json").write_text("{}")
    t = time.time() - age_days * DAY
    os.utime(dump, (t, t))
    return dump


@plain_only
def test_rotation_removes_old_dumps_but_keeps_the_newest(postgres, loaded_db, playbook, tmp_path):
    db, bdir = loaded_db, tmp_path / "backups"
    bdir.mkdir()
    recent = plant(bdir, db, "20240110_000000", 1)
    old = {n: plant(bdir, db, f"2024010{n}_000000", 9 + n) for n in range(1, 6)}  # 10..14 days old
    other_db = bdir / "otherdb_20240101_000000.dump"
    other_db.write_bytes(b"not ours")
    os.utime(other_db, (time.time() - 30 * DAY,) * 2)

    ok(playbook("backup.yml", conn_vars(postgres, db, bdir, db_backup_keep_min=3, db_backup_retention_days=7)))
    dumps = sorted(p.name for p in bdir.glob(f"{db}_*.dump"))
    # Kept: the new dump, the 1-day-old one, and the 10-day-old one (past retention, but among the newest 3).
    assert len(dumps) == 3, dumps
    assert recent.exists() and old[1].exists()
    for n in range(2, 6):
        assert not old[n].exists()
        assert not old[n].with_name(old[n].name.replace(".dump", ".manifest.json")).exists()
    assert other_db.exists(), "another database's dumps are not ours to rotate"


@plain_only
def test_rotation_keeps_the_newest_even_when_all_are_old(postgres, loaded_db, playbook, tmp_path):
    db, bdir = loaded_db, tmp_path / "backups"
    bdir.mkdir()
    for n in range(1, 5):
        plant(bdir, db, f"2023010{n}_000000", 100 + n)
    ok(playbook("backup.yml", conn_vars(postgres, db, bdir, db_backup_keep_min=3)))
    names = sorted(p.name for p in bdir.glob(f"{db}_*.dump"))
    assert len(names) == 3
    assert f"{db}_20230101_000000.dump" in names and f"{db}_20230102_000000.dump" in names


@plain_only
def test_backup_leaves_the_newest_dump_for_node_exporter(postgres, loaded_db, playbook, tmp_path):
    """node-exporter's textfile collector reads what the alert DatabaseBackupTooOld needs: the newest
    dump's time and size and the number kept after rotation, readable by another user."""
    db, bdir, textfile = loaded_db, tmp_path / "backups", tmp_path / "textfile"
    bdir.mkdir()
    plant(bdir, db, "20240101_000000", 2)
    ok(playbook("backup.yml", conn_vars(postgres, db, bdir, db_backup_textfile_dir=str(textfile))))
    prom = textfile / "prediction_db_backup.prom"
    assert prom.stat().st_mode & 0o777 == 0o644 and textfile.stat().st_mode & 0o777 == 0o755
    samples = {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in prom.read_text().splitlines()
               if line and not line.startswith("#") and f'{{database="{db}"}}' in line}
    newest = max(bdir.glob(f"{db}_*.dump"), key=lambda p: p.stat().st_mtime)
    assert samples == {"prediction_db_backup_newest_timestamp_seconds": pytest.approx(newest.stat().st_mtime, abs=1e-3),
                       "prediction_db_backup_newest_size_bytes": newest.stat().st_size,
                       "prediction_db_backup_dumps": 2}
    assert time.time() - samples["prediction_db_backup_newest_timestamp_seconds"] < 600
    # A dump's age is what Prometheus compares: the planted 2-day-old one is not the newest.
    assert newest.name != f"{db}_20240101_000000.dump"


@plain_only
def test_restore_refuses_a_tampered_dump(postgres, loaded_db, playbook, tmp_path):
    db, bdir = loaded_db, tmp_path / "backups"
    ok(playbook("backup.yml", conn_vars(postgres, db, bdir)))
    [dump] = bdir.glob("*.dump")
    with dump.open("r+b") as f:
        f.seek(dump.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    postgres.execute("DELETE FROM predictions", dbname=db)
    run = playbook("restore.yml", conn_vars(postgres, db, bdir, db_restore_dump_file=dump.name))
    assert run.rc != 0
    msg = " ".join(run.failure_messages())
    assert "does not match its manifest" in msg and "sha256" in msg and "Nothing was restored" in msg, msg
    assert postgres.execute("SELECT count(*) FROM predictions", dbname=db)[0][0] == 0


@plain_only
def test_restore_fails_loudly_when_counts_differ_from_the_manifest(postgres, loaded_db, playbook, tmp_path):
    db, bdir = loaded_db, tmp_path / "backups"
    ok(playbook("backup.yml", conn_vars(postgres, db, bdir)))
    [manifest_path] = manifests(bdir)
    manifest = json.loads(manifest_path.read_text())
    manifest["row_counts"]["public.predictions"] += 5
    manifest["row_counts"]["public.ghosts"] = 1
    manifest_path.write_text(json.dumps(manifest))
    run = playbook("restore.yml", conn_vars(postgres, db, bdir))
    assert run.rc != 0
    msg = " ".join(run.failure_messages())
    assert "public.predictions: expected 405, actual 400" in msg, msg
    assert "public.ghosts: expected 1, actual no such table" in msg, msg


@plain_only
def test_restore_names_what_is_missing(postgres, loaded_db, playbook, tmp_path):
    db, bdir = loaded_db, tmp_path / "backups"
    bdir.mkdir()
    run = playbook("restore.yml", conn_vars(postgres, db, bdir))
    assert run.rc != 0 and any("No dump" in m and "backup.yml" in m for m in run.failure_messages())

    run = playbook("restore.yml", conn_vars(postgres, db, bdir, db_restore_dump_file="nope.dump"))
    assert run.rc != 0 and any("nope.dump does not exist" in m for m in run.failure_messages())

    ok(playbook("backup.yml", conn_vars(postgres, db, bdir)))
    [manifest_path] = manifests(bdir)
    manifest_path.unlink()
    run = playbook("restore.yml", conn_vars(postgres, db, bdir))
    assert run.rc != 0 and any("manifest.json is missing" in m for m in run.failure_messages()), run.failure_messages()


@plain_only
def test_backup_check_mode_writes_nothing(postgres, loaded_db, playbook, tmp_path):
    db, bdir = loaded_db, tmp_path / "backups"
    bdir.mkdir()
    ok(playbook("backup.yml", conn_vars(postgres, db, bdir, db_backup_textfile_dir=str(tmp_path / "textfile")),
                check=True))
    assert list(bdir.iterdir()) == []
    assert not (tmp_path / "textfile").exists()


@pytest.mark.parametrize("storage_mode", ["timescaledb"])
def test_timescaledb_restore_that_cannot_finish_leaves_the_database_as_it_was(postgres, loaded_db, playbook,
                                                                             tmp_path):
    db, bdir = loaded_db, tmp_path / "backups"
    ok(playbook("backup.yml", conn_vars(postgres, db, bdir)))
    postgres.execute("DELETE FROM predictions WHERE latency_ms > 20", dbname=db)
    damaged = snapshot(postgres, db)

    # Without a superuser for TimescaleDB's restore mode: refused before anything is touched.
    no_admin = conn_vars(postgres, db, bdir)
    del no_admin["db_restore_admin_login_user"], no_admin["db_restore_admin_login_password"]
    run = playbook("restore.yml", no_admin)
    assert run.rc != 0
    msg = " ".join(run.failure_messages())
    assert "only a superuser" in msg and "db_restore_admin_login_user" in msg and "Nothing was restored" in msg, msg

    # Counts that differ from the manifest: the new database is dropped, the target stays.
    [manifest_path] = manifests(bdir)
    manifest = json.loads(manifest_path.read_text())
    manifest["row_counts"]["public.prediction_metrics"] += 1
    manifest_path.write_text(json.dumps(manifest))
    run = playbook("restore.yml", conn_vars(postgres, db, bdir))
    assert run.rc != 0
    msg = " ".join(run.failure_messages())
    assert "public.prediction_metrics: expected 121, actual 120" in msg and "left as it was" in msg, msg
    assert snapshot(postgres, db) == damaged
    assert postgres.execute("SELECT count(*) FROM pg_database WHERE datname LIKE %s", (f"{db}_re%",),
                            dbname=db) == [(0,)]
