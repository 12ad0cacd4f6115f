"""PredictionWriter: prediction rows leave the request path through a bounded queue.

``submit()`` appends to an in-memory deque and returns at once. One background task takes up to
``batch_max`` rows at a time and writes each batch with one multi-row INSERT (plus its aggregates
into ``prediction_metrics``) over an aiopg pool. The same task runs the partition maintenance of
the native-partitioning path (TimescaleDB ignores it).

Outages: a failed write keeps its batch and is retried with exponential backoff (0.1 s doubling to
5 s); once a retry succeeds the backlog is written at once, not at the next flush. Rows are only
dropped when ``queue_max`` rows are buffered. Drop policy: **drop oldest** — the
oldest row still waiting in the queue makes room for the new one, so after a long outage the
database receives the most recent ``queue_max`` rows, which is what dashboards and debugging need
most. The batch being written at that moment is never dropped. Every drop is counted
(``rows_dropped`` and the ``prediction_service_db_rows_dropped_total`` counter), including rows
the database refuses (e.g. a string it cannot store) and rows still queued when ``close()``
runs out of time.

Acknowledged writes: ``await committed(timeout)`` returns once every row submitted so far is
committed (a group commit: waiters wake the writer, and the rows that arrive during one write go
in the next). The service awaits it before answering when ``PREDICTION_DB_ACK_AFTER_WRITE`` is on,
so an answered prediction's row survives the process being killed. While the database is known to
be unreachable it returns False at once: the rows stay buffered and the service keeps answering.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any

import aiopg
import psycopg2
import psycopg2.errors

from .batch import Record, batch_statement, encode_rows, encoded, to_record

log = logging.getLogger(__name__)

_METRIC_NAMES = {
    # contract name (docs/CONTRACTS.md)       attribute of prediction_service.metrics
    "DB_WRITE_QUEUE_ROWS": "db_write_queue_rows",
    "DB_ROWS_WRITTEN": "db_rows_written_total",
    "DB_ROWS_DROPPED": "db_rows_dropped_total",
    "DB_WRITE_ERRORS": "db_write_errors_total",
}

# Errors worth retrying: the server or the network (OperationalError covers connection loss,
# shutdown, deadlock, statement timeout), or a schema that is not migrated yet. A row the database
# refuses (DataError, IntegrityError) would fail forever, so those are isolated and dropped.
_RETRYABLE = (psycopg2.OperationalError, psycopg2.InterfaceError, psycopg2.errors.UndefinedTable,
              psycopg2.errors.UndefinedFunction, psycopg2.errors.InsufficientPrivilege,
              asyncio.TimeoutError, OSError)


# What the migrations built, in one scalar: "timescaledb" (hypertables), "partitions" (the native
# fallback) or NULL (not migrated yet). Read by the health check and the hourly maintenance.
STORAGE_SQL = ("SELECT CASE (SELECT relkind FROM pg_class WHERE oid = to_regclass('predictions')) "
               "WHEN 'p' THEN 'partitions' "
               "WHEN 'r' THEN (SELECT 'timescaledb' FROM pg_extension WHERE extname = 'timescaledb') END")


class _NoMetric:
    def inc(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass


class PredictionWriter:
    """Buffers prediction rows and writes them to ``predictions`` in batches (see module doc).

    ``metrics``: an object with the four contract metrics as attributes (``DB_WRITE_QUEUE_ROWS``,
    ``DB_ROWS_WRITTEN``, ``DB_ROWS_DROPPED``, ``DB_WRITE_ERRORS``, or the lower-case names of
    ``prediction_service.metrics``); ``None`` uses ``prediction_service.metrics`` when importable.

    ``submit`` must be called from the event loop's thread.
    """

    # The row type submit() also takes (already validated: no per-row conversion in the writer),
    # here so the request path need not import the storage package itself.
    Record = Record
    # A value's JSON as the batch will hold it, encoded once: a Record may carry it instead of the
    # value (an answer served again logs the same instances and results each time).
    encoded = staticmethod(encoded)

    def __init__(self, dsn: str, instance: str, queue_max: int = 100_000, flush_interval: float = 0.5,
                 batch_max: int = 1000, retention_days: int = 30, metrics: Any = None, *,
                 partitions_ahead: int = 7, maintenance_interval: float = 3600.0,
                 backoff_min: float = 0.1, backoff_max: float = 5.0, statement_timeout: float = 30.0,
                 health_fresh: float = 2.0, health_timeout: float = 1.0, close_timeout: float = 30.0):
        if queue_max < 1 or batch_max < 1:
            raise ValueError("queue_max and batch_max must be at least 1")
        self.dsn = dsn
        self.instance = instance
        self.queue_max = queue_max
        self.flush_interval = flush_interval
        self.batch_max = batch_max
        self.retention_days = retention_days
        self.partitions_ahead = partitions_ahead
        self.maintenance_interval = maintenance_interval
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.statement_timeout = statement_timeout
        self.health_fresh = health_fresh
        self.health_timeout = health_timeout
        self.close_timeout = close_timeout

        self.rows_written = 0
        self.rows_dropped = 0
        self.write_errors = 0
        #: "timescaledb" | "partitions" as last read from the database; "unknown" before that.
        self.storage_mode = "unknown"

        m = _resolve_metrics(metrics)
        self._m_queue, self._m_written, self._m_dropped, self._m_errors = (
            m["DB_WRITE_QUEUE_ROWS"], m["DB_ROWS_WRITTEN"], m["DB_ROWS_DROPPED"], m["DB_WRITE_ERRORS"])

        self._queue: collections.deque[dict | Record] = collections.deque()
        self._inflight: list[Record] = []  # the batch being written; kept until it commits
        # committed() waiters: one future for the rows queued since the last batch that emptied the
        # queue, and the one that batch carries (rows are written in order, so its commit means
        # every row before it is written too). Made only when someone waits.
        self._queued_done: asyncio.Future | None = None
        self._inflight_done: asyncio.Future | None = None
        self.submitted = 0  # rows accepted by submit(), ever: a request can tell whether it logged any
        self._pool: aiopg.Pool | None = None
        self._task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self._closing = False
        self._closed = False
        self._db_ok: bool | None = None  # result of the last contact with the database
        self._db_checked = 0.0  # monotonic time of that contact
        self._next_maintenance = 0.0

    # -- the request path -------------------------------------------------------------------
    def submit(self, row: dict | Record) -> None:
        """Queue one row (keys: time, model, model_version, request_id, input, output, latency_ms,
        cache_hit; or a :class:`Record` of them). Never blocks, never raises; at the bound the
        oldest queued row is dropped."""
        try:
            if self._closed:
                self._drop(1)
                return
            if len(self._queue) + len(self._inflight) >= self.queue_max:
                if self._queue:
                    self._queue.popleft()
                    self._drop(1)
                else:  # everything buffered is the batch in flight: the new row is the one to go
                    self._drop(1)
                    return
            self._queue.append(row)
            self.submitted += 1
            if self._wake is not None and len(self._queue) >= self.batch_max:
                self._wake.set()
        except Exception:  # noqa: BLE001 — the request must not fail because of its log row
            log.exception("prediction row not queued")

    @property
    def queue_depth(self) -> int:
        """Rows buffered in memory, including the batch being written."""
        return len(self._queue) + len(self._inflight)

    async def committed(self, timeout: float) -> bool:
        """Wait until every row submitted so far is written (True). False, and the rows stay buffered:
        the database is known to be unreachable (at once), a write fails meanwhile, ``timeout``
        seconds pass, or the batch had rows the database refused (those are dropped and counted)."""
        if self._wake is None or self._closed or self._db_ok is False:
            return False
        if self._queue:
            if self._queued_done is None:
                self._queued_done = asyncio.get_running_loop().create_future()
            done = self._queued_done
        elif self._inflight:  # the queue is empty, so this batch holds the last rows submitted
            if self._inflight_done is None:
                self._inflight_done = asyncio.get_running_loop().create_future()
            done = self._inflight_done
        else:
            return True
        self._wake.set()  # a waiter does not wait for the flush interval
        try:
            return await asyncio.wait_for(asyncio.shield(done), timeout)
        except asyncio.TimeoutError:
            return False

    def _settle(self, done: asyncio.Future | None, committed: bool) -> None:
        if done is not None and not done.done():
            done.set_result(committed)

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        """Create the pool and the background task. Does not need the database to be up."""
        if self._task is not None:
            return
        # minsize=0: no connection at start-up, so the service starts (degraded) during an outage.
        self._pool = await aiopg.create_pool(
            self.dsn, minsize=0, maxsize=2, timeout=max(self.statement_timeout, 5.0),
            connect_timeout=5, application_name=f"prediction_service:{self.instance}"[:63])
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="prediction-writer")

    async def close(self) -> None:
        """Write what is still queued (waiting at most ``close_timeout`` seconds), then close the pool.
        Rows that could not be written in that time are counted as dropped."""
        if self._closed:
            return
        self._closing = True
        if self._task is not None:
            self._wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(self._task), self.close_timeout)
            except asyncio.TimeoutError:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
            except Exception:  # noqa: BLE001
                log.exception("prediction writer task failed")
        lost = self.queue_depth
        if lost:
            log.error("closing with %d prediction rows not written (database unreachable); dropped", lost)
            self._queue.clear()
            self._inflight = []
            self._drop(lost)
        self._closed = True
        self._settle(self._inflight_done, False)
        self._settle(self._queued_done, False)
        self._inflight_done = self._queued_done = None
        self._m_queue.set(0)
        if self._pool is not None:
            self._pool.terminate()
            await self._pool.wait_closed()
            self._pool = None

    async def healthy(self) -> bool:
        """Whether the database answers: the last contact if recent, else a one-row query (short timeout)
        that also refreshes :attr:`storage_mode`."""
        if self._pool is None or self._closed:
            return False
        if self._db_ok is not None and time.monotonic() - self._db_checked < self.health_fresh:
            return self._db_ok
        try:
            await asyncio.wait_for(self._select_one(), self.health_timeout)
        except Exception:  # noqa: BLE001 — any failure means not healthy
            self._contact(False)
        else:
            self._contact(True)
        return bool(self._db_ok)

    async def _select_one(self) -> None:
        async with self._pool.acquire() as conn:
            async with conn.cursor() as cur:
                await cur.execute(STORAGE_SQL, timeout=self.health_timeout)
                self.storage_mode = (await cur.fetchone())[0] or "unknown"

    # -- the background task ----------------------------------------------------------------
    async def _run(self) -> None:
        backoff = self.backoff_min
        while True:
            try:
                if not self._closing:
                    await self._sleep(self.flush_interval)
                self._wake.clear()
                draining = False
                # Each flush writes what is queued, then goes on only while full batches are
                # waiting (or a batch must be retried, or close() wants everything out).
                while self._inflight or self._queue:
                    if not self._closing and time.monotonic() >= self._next_maintenance:
                        await self._maintain()  # here too, so steady traffic cannot starve it
                    self._m_queue.set(self.queue_depth)
                    if not self._inflight:
                        self._inflight = self._take_batch()
                        if not self._inflight:
                            continue
                    if await self._write_inflight():
                        # The first write after an outage goes on through the backlog at once.
                        draining = draining or backoff > self.backoff_min
                        backoff = self.backoff_min
                        if len(self._queue) < self.batch_max and not self._closing and not draining:
                            break
                    else:
                        # A plain sleep: neither new rows nor close() may shorten the backoff.
                        await asyncio.sleep(backoff)
                        backoff = min(backoff * 2, self.backoff_max)
                if not self._closing and time.monotonic() >= self._next_maintenance:
                    await self._maintain()
                self._m_queue.set(self.queue_depth)
                if self._closing:
                    return
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 — the writer must outlive any bug in one iteration
                log.exception("prediction writer iteration failed; retrying")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.backoff_max)

    async def _sleep(self, seconds: float) -> None:
        """Wait for the next flush, waking early when a full batch is waiting or on close()."""
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    def _take_batch(self) -> list[Record]:
        batch: list[Record] = []
        bad = 0
        while self._queue and len(batch) < self.batch_max:
            row = self._queue.popleft()
            try:
                batch.append(to_record(row))
            except Exception as exc:  # noqa: BLE001 — one malformed row must not stop the rest
                bad += 1
                last_error = exc
        if bad:
            log.warning("dropped %d malformed prediction rows (last: %r)", bad, last_error)
            self._drop(bad)
        if not self._queue:  # this batch holds the last rows queued: their waiters wait on it
            self._inflight_done, self._queued_done = self._queued_done, None
            if not batch:
                self._settle(self._inflight_done, False)
                self._inflight_done = None
        return batch

    async def _write_inflight(self) -> bool:
        """Write the batch in flight; True when done with it, False to retry after a backoff."""
        try:
            written = await self._insert(self._inflight)
        except _RETRYABLE as exc:
            self._write_failed(exc)
            await self._discard_idle_connections()
            return False
        except (psycopg2.Error, ValueError, TypeError) as exc:
            log.warning("database refused a batch of %d rows (%s); writing them one by one",
                        len(self._inflight), str(exc).strip())
            self._m_errors.inc()
            self.write_errors += 1
            return await self._write_one_by_one()
        self._written(written)
        self._inflight = []
        self._settle(self._inflight_done, True)
        self._inflight_done = None
        return True

    async def _write_one_by_one(self) -> bool:
        # Isolates the rows the database refuses (they are dropped and counted), keeps the rest.
        while self._inflight:
            try:
                written = await self._insert([self._inflight[0]])
            except _RETRYABLE as exc:
                self._write_failed(exc)
                return False
            except (psycopg2.Error, ValueError, TypeError) as exc:
                log.warning("dropped a prediction row the database refuses: %s", str(exc).strip())
                self._drop(1)
            else:
                self._written(written)
            self._inflight.pop(0)
        self._settle(self._inflight_done, False)  # some of its rows were refused
        self._inflight_done = None
        return True

    async def _discard_idle_connections(self) -> None:
        # After a server restart the idle pooled connections are dead; do not try each of them.
        try:
            await self._pool.clear()
        except Exception:  # noqa: BLE001
            pass

    async def _insert(self, records: list[Record]) -> int:
        """Write ``records`` with one statement; return how many were written. A record that
        cannot be encoded at all is removed from ``records`` (so a retry does not count it twice)
        and counted as dropped."""
        rows, kept = encode_rows(records)
        if len(kept) != len(records):
            log.warning("dropped %d prediction rows that cannot be encoded as JSON", len(records) - len(kept))
            self._drop(len(records) - len(kept))
            records[:] = kept
        if not kept:
            return 0
        async with self._pool.acquire() as conn:
            async with conn.cursor() as cur:
                # aiopg connections are autocommit; the rows and their aggregates are one
                # statement (a data-modifying CTE), so they commit together.
                await cur.execute(batch_statement(rows, self.instance), timeout=self.statement_timeout)
        return len(kept)

    async def _maintain(self) -> None:
        """Create upcoming daily partitions and drop expired ones (no-op on TimescaleDB)."""
        try:
            async with self._pool.acquire() as conn:
                async with conn.cursor() as cur:
                    await cur.execute(
                        "SELECT 'created', p FROM prediction_partitions_ensure(%s) AS p "
                        "UNION ALL SELECT 'dropped', p FROM prediction_partitions_drop_older_than("
                        "make_interval(days => %s)) AS p "
                        f"UNION ALL SELECT 'storage', ({STORAGE_SQL})",
                        (self.partitions_ahead, self.retention_days), timeout=self.statement_timeout)
                    changes = await cur.fetchall()
        except Exception as exc:  # noqa: BLE001 — rows keep flowing into the DEFAULT partition
            self._contact(False)
            log.warning("partition maintenance failed, retrying in 60 s: %s", str(exc).strip())
            self._next_maintenance = time.monotonic() + min(60.0, self.maintenance_interval)
            return
        self._contact(True)
        self._next_maintenance = time.monotonic() + self.maintenance_interval
        for action, name in changes:
            if action == "storage":
                self.storage_mode = name or "unknown"
            else:
                log.info("partition maintenance: %s %s", action, name)

    # -- bookkeeping ------------------------------------------------------------------------
    def _written(self, n: int) -> None:
        if not n:
            return
        self.rows_written += n
        self._m_written.inc(n)
        if self._db_ok is False:
            log.info("database writes recovered; %d rows still queued", self.queue_depth - n)
        self._contact(True)

    def _write_failed(self, exc: BaseException) -> None:
        self.write_errors += 1
        self._m_errors.inc()
        if self._db_ok is not False:  # log the start of an outage, not every retry
            log.warning("database write failed, keeping %d rows and retrying with backoff: %s",
                        self.queue_depth, str(exc).strip() or type(exc).__name__)
        self._contact(False)
        # Nobody waits out a backoff: the rows stay queued and the answers go out now.
        for done in (self._inflight_done, self._queued_done):
            self._settle(done, False)
        self._inflight_done = self._queued_done = None

    def _drop(self, n: int) -> None:
        self.rows_dropped += n
        self._m_dropped.inc(n)

    def _contact(self, ok: bool) -> None:
        self._db_ok = ok
        self._db_checked = time.monotonic()


def _resolve_metrics(metrics: Any) -> dict[str, Any]:
    if metrics is None:
        try:
            from prediction_service import metrics as service_metrics
        except ImportError:
            service_metrics = None
        metrics = service_metrics
    resolved = {}
    for contract, module_name in _METRIC_NAMES.items():
        obj = getattr(metrics, contract, None) or getattr(metrics, module_name, None)
        resolved[contract] = obj if obj is not None else _NoMetric()
    return resolved
