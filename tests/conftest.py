"""Fixtures shared by every test: real throwaway PostgreSQL 15 and Redis servers.

- ``postgres`` / ``redis_server``: one server each for the whole session (fast); tests that need
  isolation take ``fresh_db`` (a new empty database) or flush Redis themselves.
- ``postgres_factory`` / ``redis_factory``: private servers for tests that stop and restart them
  (outage tests), cleaned up at the end of the test; ``postgres_factory(timescaledb=True)``
  preloads TimescaleDB (``scheduler=True``: and runs its job scheduler).
- Storage modes: ``postgres_in_mode`` is the session server of each mode in turn (parametrised by
  ``storage_mode``: "timescaledb", a server preloading TimescaleDB, so the migrations build
  hypertables; "partitions", the plain server, so they build the native-partitioning fallback).
  Folders whose tests apply to both modes make ``postgres`` return it (tests/storage, the database
  ops tests); a test of one mode only says ``@pytest.mark.parametrize("storage_mode", ["…"])``.
  Without TimescaleDB its tests skip with the reason, except under CI=true, where they fail.
"""
from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness.postgres import (STORAGE_MODES, PostgresServer, require_timescaledb,  # noqa: E402
                              start_postgres)
from harness.redis import RedisServer, start_redis  # noqa: E402

_db_counter = itertools.count()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def postgres_plain() -> PostgresServer:
    """The session server without TimescaleDB preloaded (the native-partitioning fallback)."""
    server = start_postgres()
    yield server
    server.destroy()


@pytest.fixture(scope="session")
def postgres_timescaledb() -> PostgresServer:
    """The session server with TimescaleDB preloaded (hypertables)."""
    require_timescaledb()
    server = start_postgres(timescaledb=True)
    yield server
    server.destroy()


@pytest.fixture(scope="session")
def postgres(postgres_plain) -> PostgresServer:
    return postgres_plain


@pytest.fixture(params=STORAGE_MODES)
def storage_mode(request) -> str:
    return request.param


@pytest.fixture
def postgres_in_mode(storage_mode, request) -> PostgresServer:
    """The session server of ``storage_mode``."""
    return request.getfixturevalue(f"postgres_{'timescaledb' if storage_mode == 'timescaledb' else 'plain'}")


@pytest.fixture(scope="session")
def redis_server() -> RedisServer:
    server = start_redis()
    yield server
    server.destroy()


@pytest.fixture
def fresh_db(postgres: PostgresServer, request) -> str:
    """App-user DSN of a new, empty database on the session server."""
    name = f"t{next(_db_counter)}_{request.node.name[:40]}".lower()
    name = "".join(c if c.isalnum() else "_" for c in name)
    return postgres.create_database(name)


@pytest.fixture
def postgres_factory():
    servers: list[PostgresServer] = []

    def make(timescaledb: bool = False, **options) -> PostgresServer:
        if timescaledb:
            require_timescaledb()
        server = start_postgres(timescaledb=timescaledb, **options)
        servers.append(server)
        return server

    yield make
    for s in servers:
        s.destroy()


@pytest.fixture
def redis_factory():
    servers: list[RedisServer] = []

    def make() -> RedisServer:
        server = start_redis()
        servers.append(server)
        return server

    yield make
    for s in servers:
        s.destroy()
