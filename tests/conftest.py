"""Fixtures shared by every test: real throwaway PostgreSQL 15 and Redis servers.

- ``postgres`` / ``redis_server``: one server each for the whole session (fast); tests that need
  isolation take ``fresh_db`` (a new empty database) or flush Redis themselves.
- ``postgres_factory`` / ``redis_factory``: private servers for tests that stop and restart them
  (outage tests), cleaned up at the end of the test.
"""
from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness.postgres import PostgresServer, start_postgres  # noqa: E402
from harness.redis import RedisServer, start_redis  # noqa: E402

_db_counter = itertools.count()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def postgres() -> PostgresServer:
    server = start_postgres()
    yield server
    server.destroy()


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

    def make() -> PostgresServer:
        server = start_postgres()
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
