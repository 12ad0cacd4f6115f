"""The harness itself: real servers answer, and outages are real."""
import psycopg2
import pytest
import redis


def test_postgres_is_real_and_app_user_can_write(postgres, fresh_db):
    conn = psycopg2.connect(fresh_db)
    with conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE t (x int); INSERT INTO t VALUES (1); SELECT version()")
        assert "PostgreSQL 15" in cur.fetchone()[0]
    conn.close()


def test_postgres_stop_and_start_keeps_data(postgres_factory):
    pg = postgres_factory()
    pg.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
    pg.stop()
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(pg.dsn(), connect_timeout=2)
    pg.start()
    assert pg.execute("SELECT x FROM kept") == [(42,)]


def test_redis_is_real_and_outage_is_real(redis_factory):
    r = redis_factory()
    r.client().set("k", "v")
    assert r.client().get("k") == b"v"
    r.stop()
    with pytest.raises(redis.ConnectionError):
        r.client().ping()
    r.start()
    assert r.client().ping()
