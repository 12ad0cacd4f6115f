"""Storage of predictions in PostgreSQL/TimescaleDB: the SQL migrations runner and the batch writer.

    from prediction_service.storage import PredictionWriter, apply_migrations, rollback_migrations, pending_migrations

- :func:`apply_migrations` / :func:`rollback_migrations` / :func:`pending_migrations` (sync, psycopg2)
  run the files of ``service/migrations`` — see :mod:`.migrations`.
- :class:`PredictionWriter` (asyncio, aiopg) takes rows off the request path and writes them in
  batches — see :mod:`.writer`.
- ``python -m prediction_service.storage migrate|rollback --to N|status`` — see :mod:`.__main__`.
"""
from .migrations import (MIGRATIONS_DIR, MigrationError, apply_migrations, enable_login, pending_migrations,
                         rollback_migrations)
from .writer import PredictionWriter

__all__ = ["MIGRATIONS_DIR", "MigrationError", "PredictionWriter", "apply_migrations", "enable_login",
           "pending_migrations", "rollback_migrations"]
