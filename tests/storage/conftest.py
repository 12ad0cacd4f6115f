"""Fixtures of the storage tests: a migrated database on the session's throwaway PostgreSQL."""
from __future__ import annotations

import pytest

from prediction_service.storage import apply_migrations


@pytest.fixture
def migrated_db(fresh_db: str) -> str:
    """App DSN of a new database with every migration applied (the native-partitioning path here)."""
    apply_migrations(fresh_db)
    return fresh_db
