"""Adaptive batching: the cache misses of concurrent requests to one model version run as one call.

Every prediction reaches the model through ``prediction.predict_rows`` (``/api/v1``, ``/v2`` and any
other API alike), which hands a version with ``max_batch_size`` > 1 to its :class:`Batcher`:

- a request that finds the model idle runs at once, alone, exactly as with batching off: batching
  never makes a lone request wait, nor costs it more than a few attribute checks;
- requests that reach the model while it is busy — while a call runs, or later in the same turn of
  the event loop as a call that ran inline — are queued; when the call ends, the queue runs as one
  call of at most ``max_batch_size`` rows (whole requests: one larger than that runs alone, the
  rest wait for the next call). A batch that is not full may wait up to ``max_batch_delay_us``,
  counted from when its oldest request was queued, for more to join (0 by default: never);
- a batched call expected to be short runs inline on the event loop, and the requests that arrive
  meanwhile are read, all together, right after it; a longer one (over THREAD_MIN_SECONDS, from
  what the version's calls have cost so far) runs in a worker thread — ONNX Runtime releases the
  GIL — so that the loop keeps reading and queueing requests, and answering cache hits, while it
  runs. Why not always the thread: a hop to it and back costs ≈ 40 µs of CPU on an idle machine
  and milliseconds on a busy one (measured here, docs/performance.md, issue 19), more than a short
  call, and it gains nothing on one core;
- each request keeps its own fate: its own results, and its own error when the model has no
  finite output for one of its rows (its neighbours get their answers); if a batched call fails
  as a whole, each of its requests is run again alone so that only the one at fault gets the error.
  A request whose deadline passes while queued is cancelled by the middleware and skipped; one
  cancelled while its call runs does not receive the result. Each request stores its own results
  in the cache and writes its own log rows afterwards, as without batching.

One Batcher per loaded model version: versions never share a call. Everything but the inference
itself runs on the event loop's thread (so the metrics are loop_metrics, without locks).
"""
from __future__ import annotations

import asyncio
import time
from collections import deque

import numpy as np

from . import metrics
from .models import EXECUTOR_MIN_ROWS, Model, NonFiniteOutput

# A batched call expected to take longer than this runs in a worker thread, so that the event loop
# keeps reading, queueing and answering other requests meanwhile; a shorter one runs inline. 2 ms:
# above a call of 64 rows of the heavy demo model (iris_ensemble, ≈ 0.65 ms, `python -m bench.batch_cost`),
# which on one core gains nothing from the thread and pays its hop.
THREAD_MIN_SECONDS = 0.002
COST_WEIGHT = 0.1  # of the newest call in the moving averages of what a call costs


class Batcher:
    """The inference queue of one model version (event loop only)."""

    __slots__ = ("model", "max_rows", "max_delay", "_queue", "_queued_rows", "_busy", "_timer", "_one_row",
                 "_extra_row", "_size_hist", "_rows_hist", "_wait_hist")

    def __init__(self, model: Model, one_row_seconds: float = 0.0):
        self.model = model
        self.max_rows = model.max_batch_size
        self.max_delay = model.max_batch_delay_us / 1e6
        # (rows, future, time queued) per waiting request, oldest first.
        self._queue: deque[tuple[list, asyncio.Future, float]] = deque()
        self._queued_rows = 0
        # A call is running, or ran inline earlier in this turn of the event loop, or a batch waits
        # (timer) to fill up: requests arriving now queue. False only with an empty queue.
        self._busy = False
        self._timer: asyncio.TimerHandle | None = None
        # What a call costs, as moving averages of the calls made: seconds for a call of one row, and
        # for each further row in a call. They decide the thread (_expected_seconds).
        self._one_row = one_row_seconds
        self._extra_row = 0.0
        labels = (model.name, model.version)
        self._size_hist = metrics.batch_requests.labels(*labels)
        self._rows_hist = metrics.batch_rows.labels(*labels)
        self._wait_hist = metrics.batch_queue_wait_seconds.labels(*labels)

    @property
    def queued(self) -> int:
        """Requests waiting for a batch (not counting those of the call running)."""
        return len(self._queue)

    async def predict(self, rows: list[list[float]]) -> list[dict]:
        """The model's result for each row (as ``Model.predict``), computed alone when the model is
        idle, else in one call with the other requests queued meanwhile. Raises NonFiniteOutput
        naming this request's rows at fault."""
        loop = asyncio.get_running_loop()
        if not self._busy:
            return await self._alone(loop, rows)
        future = loop.create_future()
        self._queue.append((rows, future, time.perf_counter()))
        self._queued_rows += len(rows)
        if self._timer is not None and self._queued_rows >= self.max_rows:
            self._timer.cancel()  # the batch waiting to fill up is full now
            self._timer = None
            loop.call_soon(self._start, loop)
        return await future

    async def _alone(self, loop: asyncio.AbstractEventLoop, rows: list) -> list[dict]:
        """The model is idle: this request's call starts now, alone, exactly as with batching off
        (inline, or in the worker thread from EXECUTOR_MIN_ROWS rows)."""
        self._busy = True
        n = len(rows)
        self._observe(1, n, 0.0)
        x = np.asarray(rows, dtype=np.float32)
        if n >= EXECUTOR_MIN_ROWS:
            future = loop.create_future()
            batch = [(rows, future, 0.0)]
            try:
                self._in_thread(loop, batch, x)
            except Exception as exc:  # noqa: BLE001 — the executor is shut down: this request's error
                self._finish(loop, batch, exc)
            return await future
        # Whoever reaches the model later in this turn of the event loop queues, and the queue runs
        # as one call on the loop's next turn (or the model goes idle again).
        loop.call_soon(self._next, loop)
        outputs, _ = self._infer(x, (n,))
        results, bad = self.model.decode(outputs, n)
        if bad:
            raise NonFiniteOutput(bad)
        return results

    def _observe(self, requests: int, rows: int, *waits: float) -> None:
        self._size_hist.observe(requests)
        self._rows_hist.observe(rows)
        observe = self._wait_hist.observe
        for wait in waits:
            observe(wait)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run the next batch from the queue (or go idle when nothing is left to run)."""
        self._timer = None
        queue = self._queue
        batch = []
        n = 0
        while queue:
            rows, future, _ = queue[0]
            if future.done():  # cancelled while queued (its deadline passed): nothing to compute
                queue.popleft()
                self._queued_rows -= len(rows)
                continue
            if batch and n + len(rows) > self.max_rows:
                break
            batch.append(queue.popleft())
            self._queued_rows -= len(rows)
            n += len(rows)
        if not batch:
            self._busy = False
            return
        try:
            now = time.perf_counter()
            self._observe(len(batch), n, *(now - queued for _, _, queued in batch))
            x = np.asarray([row for rows, _, _ in batch for row in rows], dtype=np.float32)
            if self._expected_seconds(n) >= THREAD_MIN_SECONDS:
                self._in_thread(loop, batch, x)
                return
            # Short: inline. A thread hop costs ≈ 40 µs of CPU (measured) and gains nothing here.
            outcome = self._infer(x, [len(rows) for rows, _, _ in batch])
        except Exception as exc:  # noqa: BLE001 — a batch of one failed, or the call could not start
            outcome = exc
        self._finish(loop, batch, outcome)

    def _expected_seconds(self, rows: int) -> float:
        return self._one_row + (rows - 1) * self._extra_row

    def _in_thread(self, loop: asyncio.AbstractEventLoop, batch: list, x: np.ndarray) -> None:
        running = loop.run_in_executor(None, self._infer, x, [len(rows) for rows, _, _ in batch])
        running.add_done_callback(lambda done: self._finish(loop, batch, _outcome(done)))

    def _infer(self, x: np.ndarray, sizes) -> tuple[list | None, list | None]:
        """The call's outputs, or — when a batched call failed — each request's own outputs or
        exception. Runs inline or in the worker thread."""
        run = self.model.run
        start = time.perf_counter()
        try:
            outputs = run(x)
        except Exception:  # noqa: BLE001 — whatever ONNX Runtime raised, find out whose rows did it
            if len(sizes) == 1:
                raise
        else:
            # Plain float stores (atomic under the GIL), read on the loop's thread.
            seconds, n = time.perf_counter() - start, len(x)
            if n == 1:
                self._one_row += (seconds - self._one_row) * COST_WEIGHT
            else:
                extra = max(seconds - self._one_row, 0.0) / (n - 1)
                self._extra_row += (extra - self._extra_row) * COST_WEIGHT
            return outputs, None
        each, start = [], 0
        for size in sizes:
            try:
                each.append(run(x[start:start + size]))
            except Exception as exc:  # noqa: BLE001 — this request's own error
                each.append(exc)
            start += size
        return None, each

    def _finish(self, loop: asyncio.AbstractEventLoop, batch: list, outcome) -> None:
        """On the loop: give each request its results (or its error); what queued meanwhile runs on
        the loop's next turn, after these requests have answered."""
        try:
            if isinstance(outcome, BaseException):  # a batch of one failed, or the call could not start
                _fail(batch, outcome)
            else:
                self._hand_out(batch, *outcome)
        except Exception as exc:  # noqa: BLE001 — never leave a request waiting, nor the queue stuck
            _fail(batch, exc)
        finally:
            loop.call_soon(self._next, loop)

    def _hand_out(self, batch: list, outputs: list | None, each: list | None) -> None:
        """Each request's slice of the call's outputs (or its own outputs or exception, ``each``)."""
        decode = self.model.decode
        if outputs is not None:
            results, bad = decode(outputs, sum(len(rows) for rows, _, _ in batch))
        start = 0
        for i, (rows, future, _) in enumerate(batch):
            size = len(rows)
            if outputs is not None:
                mine = results[start:start + size]
                faults = [j - start for j in bad if start <= j < start + size] if bad else ()
            elif isinstance(each[i], BaseException):
                if not future.done():
                    future.set_exception(each[i])
                start += size
                continue
            else:
                mine, faults = decode(each[i], size)
            start += size
            if future.done():  # cancelled while its call ran (deadline): nobody waits for it
                continue
            if faults:
                future.set_exception(NonFiniteOutput(list(faults)))
            else:
                future.set_result(mine)

    def _next(self, loop: asyncio.AbstractEventLoop) -> None:
        """After a call: run what queued meanwhile, wait for more (max_batch_delay_us), or go idle."""
        queue = self._queue
        while queue and queue[0][1].done():  # drop what was cancelled while it waited
            self._queued_rows -= len(queue.popleft()[0])
        if not queue:
            self._busy = False
            return
        if self.max_delay and self._queued_rows < self.max_rows:
            wait = queue[0][2] + self.max_delay - time.perf_counter()
            if wait > 0:  # not full: wait for more, up to the oldest request's delay
                self._timer = loop.call_later(wait, self._start, loop)
                return
        self._start(loop)


def _outcome(done: asyncio.Future):
    """What the worker thread's call came to: ``_infer``'s result, or the exception it raised."""
    if done.cancelled():  # its executor was shut down with the call still queued
        return RuntimeError("the inference call was cancelled: the service is shutting down")
    return done.exception() or done.result()


def _fail(batch: list, exc: BaseException) -> None:
    for _, future, _ in batch:
        if not future.done():
            future.set_exception(exc)
