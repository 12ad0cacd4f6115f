"""Two-tier prediction cache: a bounded in-process LRU with TTL in front of Redis.

Why two tiers: one Redis round trip costs more than a small model's inference, so repeats must be
answered from process memory. Redis is the shared tier (all replicas see each other's results):
read only on a local miss — concurrent reads within one event-loop tick are merged into one MGET —
and written off the response path by a background task that pipelines the SETs. Writes are
coalesced for up to WRITE_DELAY seconds (or WRITE_BATCH keys): redis-py spends far more CPU per
pipeline round than per command, and at a few concurrent connections waking the writer on every
put made each pipeline carry one or two SETs.

A Redis failure never fails a request: it is counted (``cache_errors_total{operation}``), Redis is
skipped for a short, growing back-off (so an outage costs nothing per request), and the next
attempt after the back-off reconnects by itself.

Keys: ``pred:<model>:<version>:<blake2b of the feature vector in metadata order>`` — the vector is
the canonical instance (JSON key order and ``1`` vs ``1.0`` do not matter).
"""
from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections import OrderedDict
from hashlib import blake2b

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from . import metrics

log = logging.getLogger(__name__)

BACKOFF_MIN = 0.5
BACKOFF_MAX = 5.0
REDIS_TIMEOUT = 0.25  # seconds; a slow Redis must not hold requests for long
WRITE_QUEUE_MAX = 10000
WRITE_BATCH = 500
WRITE_DELAY = 0.05  # seconds a queued write may wait for others to join its pipeline


def redis_key(model: str, version: str, row: list[float]) -> str:
    digest = blake2b(struct.pack(f"<{len(row)}d", *row), digest_size=16).hexdigest()
    return f"pred:{model}:{version}:{digest}"


class LocalCache:
    """Bounded LRU with per-entry TTL. Not thread-safe: used only from the event loop."""

    __slots__ = ("_data", "_max", "_ttl")

    def __init__(self, max_entries: int, ttl_seconds: float):
        self._data: OrderedDict = OrderedDict()
        self._max = max_entries
        self._ttl = ttl_seconds

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key):
        item = self._data.get(key)
        if item is None:
            return None
        if item[0] < time.monotonic():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return item[1]

    def put(self, key, value) -> None:
        if self._max <= 0:
            return
        data = self._data
        data[key] = (time.monotonic() + self._ttl, value)
        data.move_to_end(key)
        if len(data) > self._max:
            data.popitem(last=False)

    def clear(self) -> None:
        self._data.clear()


class RedisTier:
    """The shared tier. All methods are safe to call while Redis is down: they never raise."""

    def __init__(self, url: str, ttl_seconds: int):
        # One immediate retry lets a pooled connection broken by a Redis restart be replaced
        # transparently; no backoff sleeps on the request path.
        self.client = aioredis.Redis.from_url(
            url, socket_connect_timeout=REDIS_TIMEOUT, socket_timeout=REDIS_TIMEOUT,
            retry=Retry(NoBackoff(), 1), health_check_interval=0, client_name="prediction_service")
        self.ttl = ttl_seconds
        self._down_until = 0.0
        self._backoff = BACKOFF_MIN
        self._reads: list[tuple[list[str], asyncio.Future]] = []
        self._read_scheduled = False
        self._writes: dict[str, bytes] = {}
        self._write_wakeup = asyncio.Event()
        self._write_timer: asyncio.TimerHandle | None = None
        self._writer_task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._skip_get = metrics.cache_errors_total.labels(operation="get_skipped")
        self._err_get = metrics.cache_errors_total.labels(operation="get")
        self._err_set = metrics.cache_errors_total.labels(operation="set")
        self._drop_set = metrics.cache_errors_total.labels(operation="set_dropped")

    # --- state ---------------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """False while backing off after a failure."""
        return time.monotonic() >= self._down_until

    def _failed(self, operation: str, exc: BaseException) -> None:
        if self.available:
            log.warning("redis %s failed (%s: %s); skipping redis for %.1fs", operation,
                        type(exc).__name__, exc, self._backoff)
        self._down_until = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)

    def _succeeded(self) -> None:
        if self._backoff != BACKOFF_MIN:
            log.info("redis is reachable again")
        self._backoff = BACKOFF_MIN
        self._down_until = 0.0

    async def ping(self) -> bool:
        """True when Redis answers now (used by /ready; a success also ends any back-off)."""
        try:
            await self.client.ping()
        except Exception as exc:  # noqa: BLE001 — any failure just means "down"
            metrics.cache_errors_total.labels(operation="ping").inc()
            self._failed("ping", exc)
            return False
        self._succeeded()
        return True

    # --- reads: merged per event-loop tick -----------------------------------------------------

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        """Values for ``keys`` (None where absent or when Redis is unavailable)."""
        if not self.available:
            self._skip_get.inc()
            return [None] * len(keys)
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._reads.append((keys, fut))
        if not self._read_scheduled:
            self._read_scheduled = True
            loop.call_soon(self._flush_reads)
        return await fut

    def _flush_reads(self) -> None:
        batch, self._reads, self._read_scheduled = self._reads, [], False
        task = asyncio.get_running_loop().create_task(self._mget(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _mget(self, batch: list[tuple[list[str], asyncio.Future]]) -> None:
        keys = [k for ks, _ in batch for k in ks]
        try:
            values = await self.client.mget(keys)
        except Exception as exc:  # noqa: BLE001 — Redis trouble of any kind degrades to a miss
            self._err_get.inc()
            self._failed("get", exc)
            values = [None] * len(keys)
        else:
            self._succeeded()
        pos = 0
        for ks, fut in batch:
            if not fut.done():  # the request may have timed out meanwhile
                fut.set_result(values[pos:pos + len(ks)])
            pos += len(ks)

    # --- writes: background, pipelined ---------------------------------------------------------

    def put(self, key: str, value: bytes) -> None:
        """Queue a write; never waits. Dropped (and counted) when Redis is down or the queue is full."""
        if not self.available or len(self._writes) >= WRITE_QUEUE_MAX:
            self._drop_set.inc()
            return
        writes = self._writes
        writes[key] = value
        if len(writes) >= WRITE_BATCH:
            self._write_wakeup.set()
        elif self._write_timer is None:
            self._write_timer = asyncio.get_running_loop().call_later(WRITE_DELAY, self._write_wakeup.set)

    def start(self) -> None:
        self._writer_task = asyncio.get_running_loop().create_task(self._write_loop(), name="redis-cache-writer")

    async def _write_loop(self) -> None:
        while True:
            await self._write_wakeup.wait()
            self._write_wakeup.clear()
            if self._write_timer is not None:
                self._write_timer.cancel()
                self._write_timer = None
            while self._writes:
                await self._write_batch()

    async def _write_batch(self) -> None:
        items = []
        for key in list(self._writes)[:WRITE_BATCH]:
            items.append((key, self._writes.pop(key)))
        try:
            pipe = self.client.pipeline(transaction=False)
            for key, value in items:
                pipe.set(key, value, ex=self.ttl)
            await pipe.execute()
        except Exception as exc:  # noqa: BLE001
            self._err_set.inc(len(items))
            self._failed("set", exc)
            self._writes.clear()  # stale by the time Redis is back; the local tier still has them
        else:
            self._succeeded()

    async def close(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        if self._writer_task is not None:
            if self._writes and self.available:
                try:
                    await asyncio.wait_for(self._write_batch(), timeout=1.0)
                except (asyncio.TimeoutError, Exception):  # noqa: BLE001 — shutting down anyway
                    pass
            self._writer_task.cancel()
            try:
                await self._writer_task
            except asyncio.CancelledError:
                pass
        for task in list(self._tasks):
            task.cancel()
        await self.client.aclose()


class PredictionCache:
    """Local tier + Redis tier for per-instance prediction results (JSON-able dicts)."""

    def __init__(self, local: LocalCache, shared: RedisTier | None):
        self.local = local
        self.shared = shared

    @staticmethod
    def key(model, row: list[float]) -> tuple:
        """The in-process tier's key of ``row``'s result."""
        return (model.name, model.version, tuple(row))

    async def lookup(self, model, rows: list[list[float]]) -> tuple[list, list[int]]:
        """Cached results for ``rows`` (None where missing) and the indexes still to compute."""
        name, version = model.name, model.version
        results: list = [None] * len(rows)
        missing: list[int] = []
        local = self.local
        for i, row in enumerate(rows):
            hit = local.get((name, version, tuple(row)))  # key() inlined: once per instance
            if hit is None:
                missing.append(i)
            else:
                results[i] = hit
        n_local = len(rows) - len(missing)
        if n_local:
            model.local_hits.inc(n_local)
        if missing and self.shared is not None and model.shared_cache:
            keys = [redis_key(name, version, rows[i]) for i in missing]
            values = await self.shared.get_many(keys)
            still = []
            n_redis = 0
            for i, raw in zip(missing, values):
                value = _decode(raw)
                if value is None:
                    still.append(i)
                else:
                    results[i] = value
                    local.put((name, version, tuple(rows[i])), value)
                    n_redis += 1
            if n_redis:
                model.redis_hits.inc(n_redis)
            missing = still
        if missing:
            model.misses.inc(len(missing))
        return results, missing

    def store(self, model, row: list[float], value: dict) -> None:
        """Remember a freshly computed result in both tiers (Redis in the background)."""
        self.local.put(self.key(model, row), value)
        if self.shared is not None and model.shared_cache:
            self.shared.put(redis_key(model.name, model.version, row), orjson.dumps(value))


def _decode(raw: bytes | None):
    if raw is None:
        return None
    try:
        value = orjson.loads(raw)
    except ValueError:  # orjson.JSONDecodeError is a ValueError
        return None  # a foreign or corrupt entry is just a miss
    return value if isinstance(value, dict) else None
