"""Helpers of the storage tests (a module name of its own: every test folder has a conftest.py)."""
from __future__ import annotations

import psycopg2


def query(dsn: str, sql: str, params=None):
    """Run one statement as the app user (autocommit); all rows, or None for statements without rows."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()
