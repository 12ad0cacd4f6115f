"""Fixtures of the storage tests: every test that touches a database runs in both storage modes
(TimescaleDB hypertables and the native-partitioning fallback; see tests/conftest.py)."""
from __future__ import annotations

import pytest

from prediction_service.storage import apply_migrations


@pytest.fixture
def postgres(postgres_in_mode):
    """The session server of the test's storage mode."""
    return postgres_in_mode


@pytest.fixture
def postgres_factory(postgres_factory, storage_mode):
    """Private servers (outage tests) of the test's storage mode."""
    return lambda: postgres_factory(timescaledb=storage_mode == "timescaledb")


@pytest.fixture
def migrated_db(fresh_db: str) -> str:
    """App DSN of a new database with every migration applied (hypertables or partitions, by mode)."""
    apply_migrations(fresh_db)
    return fresh_db
