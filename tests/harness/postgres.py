"""A throwaway PostgreSQL 15 server: initdb into a temp dir, a free port, password auth over TCP.

PostgreSQL refuses to run as root, so when the tests run as root the server runs as the
``postgres`` system user (created by Debian's postgresql package).

Two storage modes: ``PostgresServer(timescaledb=True)`` preloads TimescaleDB
(``shared_preload_libraries``), so the migrations build hypertables; the default server does not,
so they take the native-partitioning fallback (whether or not the extension is installed).
:func:`timescaledb_missing` says why a TimescaleDB server cannot be had here (``make timescaledb``).
TimescaleDB's job scheduler is off unless ``scheduler=True``: most tests run each policy themselves.
"""
from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2

from .net import free_port, wait_for_port

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
SUPERUSER = "postgres"
APP_USER = "prediction_user"
APP_DB = "prediction_db"
STORAGE_MODES = ("timescaledb", "partitions")
ROOT = Path(__file__).resolve().parents[2]
# The version pinned in scripts/sources.lock (the one the prod stack's image runs), and our patches to it.
TIMESCALEDB_VERSION = next(line.split()[1] for line in (ROOT / "scripts" / "sources.lock").read_text().splitlines()
                           if line.startswith("timescaledb "))
PATCHES = ROOT / "scripts" / "patches" / f"timescaledb-{TIMESCALEDB_VERSION}"


def timescaledb_missing() -> str | None:
    """None when this PostgreSQL has TimescaleDB at the pinned version, else the reason (one line)."""
    try:
        sharedir = subprocess.run([str(PG_BIN / "pg_config"), "--sharedir"], capture_output=True, text=True,
                                  check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"PostgreSQL 15 not found in {PG_BIN}"
    control = Path(sharedir) / "extension" / "timescaledb.control"
    if not control.is_file():
        return f"TimescaleDB is not installed for PostgreSQL 15 (no {control}): run make timescaledb"
    if f"default_version = '{TIMESCALEDB_VERSION}'" not in control.read_text():
        return f"{control} is not TimescaleDB {TIMESCALEDB_VERSION}: run make timescaledb"
    return None


def timescaledb_unpatched() -> str | None:
    """None when the installed TimescaleDB was built with scripts/patches/timescaledb-<version>/ (as
    build-timescaledb.sh records it), else why not: an older build lacks the scheduler fix."""
    sharedir = subprocess.run([str(PG_BIN / "pg_config"), "--sharedir"], capture_output=True, text=True).stdout.strip()
    stamp = Path(sharedir) / "extension" / f"timescaledb-{TIMESCALEDB_VERSION}.patches"
    # The lines `sha256sum` prints for each patch, as the build records them.
    wanted = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n"
                     for p in sorted(PATCHES.glob("*.patch")))
    if wanted and (not stamp.is_file() or stamp.read_text().strip() != wanted.strip()):
        return (f"TimescaleDB {TIMESCALEDB_VERSION} is installed without the patches of {PATCHES.relative_to(ROOT)} "
                "(its scheduled jobs would be recorded as failed): run make timescaledb")
    return None


def require_timescaledb() -> None:
    """Skip the calling test (fail it under CI=true) when TimescaleDB, with our patches, cannot be had here."""
    import pytest

    reason = timescaledb_missing() or timescaledb_unpatched()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must test TimescaleDB: {reason}", pytrace=False)
    pytest.skip(reason)


def _run_as() -> list[str]:
    """Command prefix that drops root to the postgres user (empty when not root)."""
    if os.geteuid() != 0:
        return []
    return ["runuser", "-u", "postgres", "--"]


@dataclass
class PostgresServer:
    """One PostgreSQL cluster. ``start()``/``stop()`` may be called repeatedly (outage tests)."""

    port: int = field(default_factory=free_port)
    timescaledb: bool = False  # preload TimescaleDB: the migrations then build hypertables
    scheduler: bool = False  # with timescaledb: let TimescaleDB's background workers run the policy jobs
    server_binary: Path = PG_BIN / "postgres"  # another build of the same PostgreSQL (a relocated copy)
    superuser_password: str = "test-superuser-pw"
    app_password: str = "test-app-pw"
    basedir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="pgtest-")))
    proc: subprocess.Popen | None = None

    host = "127.0.0.1"
    superuser = SUPERUSER
    app_user = APP_USER
    dbname = APP_DB

    @property
    def datadir(self) -> Path:
        return self.basedir / "data"

    @property
    def logfile(self) -> Path:
        return self.basedir / "postgres.log"

    def dsn(self, dbname: str | None = None, admin: bool = False) -> str:
        """libpq URL, e.g. for PREDICTION_TIMESCALE_URL (app user) or admin work (superuser)."""
        user, pw = (self.superuser, self.superuser_password) if admin else (self.app_user, self.app_password)
        return f"postgresql://{user}:{pw}@{self.host}:{self.port}/{dbname or self.dbname}"

    def init(self) -> "PostgresServer":
        self.basedir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            pg = pwd.getpwnam("postgres")
            os.chown(self.basedir, pg.pw_uid, pg.pw_gid)
        pwfile = self.basedir / "pwfile"
        pwfile.write_text(self.superuser_password + "\n")
        if os.geteuid() == 0:
            os.chown(pwfile, pwd.getpwnam("postgres").pw_uid, -1)
        subprocess.run(
            _run_as() + [str(PG_BIN / "initdb"), "-D", str(self.datadir), "-U", self.superuser,
                         "--pwfile", str(pwfile), "--auth-local=trust", "--auth-host=scram-sha-256",
                         "-E", "UTF8", "--locale=C.UTF-8"],
            check=True, capture_output=True)
        pwfile.unlink()
        return self

    @property
    def storage_mode(self) -> str:
        """What the migrations build here: "timescaledb" (hypertables) or "partitions"."""
        return STORAGE_MODES[0] if self.timescaledb else STORAGE_MODES[1]

    def start(self) -> "PostgresServer":
        # Unix socket in the data dir keeps parallel clusters apart; fsync off: throwaway data.
        settings = ["listen_addresses=127.0.0.1", f"unix_socket_directories={self.datadir}", "fsync=off",
                    "synchronous_commit=off", "full_page_writes=off", "logging_collector=off"]
        if self.timescaledb:
            # No telemetry. Without the scheduler, tests run each policy job themselves (CALL run_job),
            # so a background run cannot race them.
            settings += ["shared_preload_libraries=timescaledb", "timescaledb.telemetry_level=off"]
            if not self.scheduler:
                settings.append("timescaledb.max_background_workers=0")
        self.proc = subprocess.Popen(
            _run_as() + [str(self.server_binary), "-D", str(self.datadir), "-p", str(self.port)]
            + [arg for setting in settings for arg in ("-c", setting)],
            stdout=open(self.logfile, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 30.0) -> None:
        wait_for_port(self.port, timeout=timeout)
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg2.connect(self.dsn("postgres", admin=True)).close()
                return
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``pg_ctl stop -m fast``); the data directory stays for a restart."""
        if self.proc is None:
            return
        subprocess.run(_run_as() + [str(PG_BIN / "pg_ctl"), "-D", str(self.datadir), "stop", "-m", mode, "-w"],
                       capture_output=True)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def bootstrap_app(self) -> "PostgresServer":
        """Create the application role and database, as a deployment's init would."""
        self.execute(f"CREATE ROLE {self.app_user} LOGIN PASSWORD '{self.app_password}'", dbname="postgres")
        self.execute(f"CREATE DATABASE {self.dbname} OWNER {self.app_user}", dbname="postgres")
        return self

    def create_database(self, name: str) -> str:
        """A fresh, empty database owned by the app user; returns its app DSN."""
        self.execute(f"CREATE DATABASE {name} OWNER {self.app_user}", dbname="postgres")
        return self.dsn(name)

    def execute(self, sql: str, params=None, dbname: str | None = None, admin: bool = True):
        """Run one statement (autocommit) and return all rows, or None for statements without rows."""
        return query(self.dsn(dbname or self.dbname, admin=admin), sql, params)

    def destroy(self) -> None:
        self.stop(mode="immediate")
        shutil.rmtree(self.basedir, ignore_errors=True)


def query(dsn: str, sql: str, params=None):
    """Run one statement on ``dsn`` (autocommit); all rows, or None for statements without rows."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()


def start_postgres(timescaledb: bool = False, **options) -> PostgresServer:
    """Init, start and bootstrap a new throwaway cluster (TimescaleDB preloaded when asked; ``options``
    are PostgresServer's, e.g. ``scheduler=True``)."""
    return PostgresServer(timescaledb=timescaledb, **options).init().start().bootstrap_app()
