"""Apply and roll back the SQL migrations of ``service/migrations`` (synchronous, psycopg2).

The SQL files are the single source: psql, the TimescaleDB image's initdb folder and Ansible apply
the same files. Each up file records itself in ``schema_migrations``; this runner only decides
which files are missing, applies each in its own transaction and checks that the file did record
itself (or, for a down file, removed its row).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg2

log = logging.getLogger(__name__)

#: ``service/migrations`` (this file is ``service/prediction_service/storage/migrations.py``).
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Session-level advisory lock: instances that migrate at the same moment take turns.
_LOCK_KEY = 0x70726564  # "pred"


class MigrationError(RuntimeError):
    """A migration file is missing, misnamed or does not keep schema_migrations up to date."""


@dataclass(frozen=True)
class Migration:
    """One migration: its version, name, up file and (possibly missing) down file."""

    version: int
    name: str
    up: Path
    down: Path

    def sql(self, direction: str) -> str:
        path = self.up if direction == "up" else self.down
        if not path.is_file():
            raise MigrationError(f"{path}: no {direction} file for migration {self.version:04d}_{self.name}")
        return path.read_text(encoding="utf-8")


def discover(migrations_dir: Path | None = None) -> list[Migration]:
    """The migrations in ``migrations_dir`` (default: service/migrations), in version order."""
    folder = Path(migrations_dir) if migrations_dir else MIGRATIONS_DIR
    if not folder.is_dir():
        raise MigrationError(f"{folder}: migrations folder not found")
    found: dict[int, Migration] = {}
    for path in sorted(folder.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path}: name must be NNNN_<lowercase_name>.sql")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"{path}: version {version} also used by {found[version].up.name}")
        found[version] = Migration(version, match.group(2), path, folder / "down" / path.name)
    return [found[v] for v in sorted(found)]


def applied_versions(conn) -> set[int]:
    """Versions recorded in schema_migrations (empty when the table does not exist yet)."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
        if not cur.fetchone()[0]:
            return set()
        cur.execute("SELECT version FROM schema_migrations")
        return {row[0] for row in cur.fetchall()}


def pending_migrations(dsn: str, *, migrations_dir: Path | None = None) -> list[int]:
    """Versions of the up files not yet applied to the database at ``dsn``."""
    migrations = discover(migrations_dir)
    conn = psycopg2.connect(dsn)
    try:
        conn.autocommit = True
        done = applied_versions(conn)
    finally:
        conn.close()
    return [m.version for m in migrations if m.version not in done]


def apply_migrations(dsn: str, target: int | None = None, *,
                     migrations_dir: Path | None = None) -> list[int]:
    """Apply the missing up files in version order (up to ``target`` if given); return their versions.

    Each file runs in its own transaction, so a failing file leaves the ones before it applied and
    itself not at all. Running it again applies nothing.
    """
    migrations = discover(migrations_dir)
    applied: list[int] = []
    with _locked_connection(dsn) as conn:
        done = applied_versions(conn)
        for m in migrations:
            if m.version in done or (target is not None and m.version > target):
                continue
            _run_in_transaction(conn, m, "up")
            if m.version not in applied_versions(conn):
                raise MigrationError(f"{m.up}: applied but did not record version {m.version} in "
                                     "schema_migrations; end the file with its INSERT … ON CONFLICT DO NOTHING")
            log.info("applied migration %04d_%s", m.version, m.name)
            applied.append(m.version)
    return applied


def rollback_migrations(dsn: str, to_version: int, *, migrations_dir: Path | None = None) -> list[int]:
    """Apply the down files of applied migrations newer than ``to_version``, newest first.

    ``to_version`` itself stays applied; 0 undoes everything. Returns the versions rolled back.
    """
    if to_version < 0:
        raise MigrationError(f"rollback target must be 0 or more, got {to_version}")
    by_version = {m.version: m for m in discover(migrations_dir)}
    rolled_back: list[int] = []
    with _locked_connection(dsn) as conn:
        for version in sorted(applied_versions(conn), reverse=True):
            if version <= to_version:
                break
            m = by_version.get(version)
            if m is None:
                raise MigrationError(f"version {version} is applied but no file {version:04d}_*.sql exists "
                                     f"in {MIGRATIONS_DIR if migrations_dir is None else migrations_dir}")
            _run_in_transaction(conn, m, "down")
            if version in applied_versions(conn):
                raise MigrationError(f"{m.down}: ran but left version {version} in schema_migrations; "
                                     "the down file must delete its row")
            log.info("rolled back migration %04d_%s", m.version, m.name)
            rolled_back.append(version)
    return rolled_back


class _locked_connection:
    """A connection holding the migration advisory lock for the duration of the ``with`` block."""

    def __init__(self, dsn: str):
        self.dsn = dsn
        self.conn = None

    def __enter__(self):
        self.conn = psycopg2.connect(self.dsn)
        self.conn.autocommit = True
        with self.conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        return self.conn

    def __exit__(self, *exc):
        try:
            if not self.conn.closed:
                self.conn.rollback()
                self.conn.autocommit = True
                with self.conn.cursor() as cur:
                    cur.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
        finally:
            self.conn.close()


def _run_in_transaction(conn, migration: Migration, direction: str) -> None:
    sql = migration.sql(direction)
    path = migration.up if direction == "up" else migration.down
    conn.autocommit = False
    try:
        with conn.cursor() as cur:
            # No parameters: psycopg2 sends the file verbatim (a '%' would stay a '%').
            cur.execute(sql)
        conn.commit()
    except psycopg2.Error as exc:
        conn.rollback()
        raise MigrationError(f"{path}: {str(exc).strip()}") from exc
    finally:
        conn.autocommit = True
        for notice in conn.notices:
            log.info("%s: %s", path.name, notice.strip())
        conn.notices.clear()


def enable_login(dsn: str, role: str, password: str) -> None:
    """Give ``role`` (created by migration 0005 or 0006, or by a superuser) LOGIN with ``password``.
    Run as a role allowed to alter it (the database image's superuser)."""
    from psycopg2 import sql

    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
        if cur.fetchone() is None:
            raise MigrationError(f"role {role} does not exist: a superuser must create it "
                                 f"(CREATE ROLE {role}), then migrate again")
        cur.execute(sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD %s").format(sql.Identifier(role)), (password,))
    conn.close()
