"""Adaptive batching: the cache misses of concurrent requests to one model version run as one call.

Every prediction reaches the model through ``prediction.predict_rows`` (``/api/v1``, ``/v2`` and any
other API alike), which hands a version with ``max_batch_size`` > 1 to its :class:`Batcher`:

- a request that finds the model idle is not kept waiting: its call starts as soon as the event
  loop has handled the other requests it is already working on (a ``call_soon`` callback, no
  timer); those that reach the model in the same turn of the loop join the call;
- requests that arrive while a call is running are queued; when it ends, the queue runs as one
  call of at most ``max_batch_size`` rows (whole requests: one larger than that runs alone, the
  rest wait for the next call). A batch that is not full may wait up to ``max_batch_delay_us``,
  counted from when its oldest request was queued, for more to join (0 by default: it never waits);
- a call expected to be short runs inline on the event loop, and the requests that arrive
  meanwhile are read, all together, right after it; a longer one (over THREAD_MIN_SECONDS, from
  the version's measured cost per row) runs in a worker thread — ONNX Runtime releases the GIL —
  so that the loop keeps reading and queueing requests, and answering cache hits, while it runs.
  Why not always the thread: a hop to it and back costs ≈ 40 µs of CPU (measured here), more
  than a short call and without any gain on one core (docs/performance.md, issue 19);
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
from .models import Model, NonFiniteOutput

# A batch expected to take longer than this runs in a worker thread, so that the event loop keeps
# reading, queueing and answering other requests meanwhile; a shorter one runs inline.
THREAD_MIN_SECONDS = 0.001
ROW_SECONDS_WEIGHT = 0.1  # of the newest call in the moving average of inference seconds per row


class Batcher:
    """The inference queue of one model version (event loop only)."""

    __slots__ = ("model", "max_rows", "max_delay", "_queue", "_queued_rows", "_busy", "_timer", "_row_seconds",
                 "_size_hist", "_rows_hist", "_wait_hist")

    def __init__(self, model: Model, row_seconds: float = 0.0):
        self.model = model
        self.max_rows = model.max_batch_size
        self.max_delay = model.max_batch_delay_us / 1e6
        # (rows, future, time queued) per waiting request, oldest first.
        self._queue: deque[tuple[list, asyncio.Future, float]] = deque()
        self._queued_rows = 0
        self._busy = False  # a batch is running, about to start, or waiting (timer) to fill up
        self._timer: asyncio.TimerHandle | None = None
        # Inference seconds per row, a moving average of the calls made: what decides the thread.
        self._row_seconds = row_seconds
        labels = (model.name, model.version)
        self._size_hist = metrics.batch_requests.labels(*labels)
        self._rows_hist = metrics.batch_rows.labels(*labels)
        self._wait_hist = metrics.batch_queue_wait_seconds.labels(*labels)

    @property
    def queued(self) -> int:
        """Requests waiting for a batch (not counting the one running)."""
        return len(self._queue)

    async def predict(self, rows: list[list[float]]) -> list[dict]:
        """The model's result for each row (as ``Model.predict``), computed in a batch with any other
        requests queued meanwhile. Raises NonFiniteOutput naming this request's rows at fault."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append((rows, future, time.perf_counter()))
        self._queued_rows += len(rows)
        if not self._busy:
            # Idle: start now — after the requests this event-loop pass is already handling, which
            # join (a callback, no timer: a lone request waits for nothing).
            self._busy = True
            loop.call_soon(self._start, loop)
        elif self._timer is not None and self._queued_rows >= self.max_rows:
            self._timer.cancel()  # the batch waiting to fill up is full now
            self._timer = None
            loop.call_soon(self._start, loop)
        return await future

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
        now = time.perf_counter()
        observe = self._wait_hist.observe
        for _, _, queued in batch:
            observe(now - queued)
        self._size_hist.observe(len(batch))
        self._rows_hist.observe(n)
        x = np.asarray([row for rows, _, _ in batch for row in rows], dtype=np.float32)
        sizes = [len(rows) for rows, _, _ in batch]
        if n * self._row_seconds < THREAD_MIN_SECONDS:
            # Short: inline. A thread hop costs ≈ 40 µs of CPU (measured) and gains nothing here.
            try:
                outcome = self._infer(x, sizes)
            except Exception as exc:  # noqa: BLE001 — handed to the request below
                outcome = exc
            self._finish(loop, batch, outcome)
            return
        try:
            running = loop.run_in_executor(None, self._infer, x, sizes)
        except RuntimeError as exc:  # the executor is shut down (the loop is closing)
            self._finish(loop, batch, exc)
            return
        running.add_done_callback(lambda done: self._finish(loop, batch, done.exception() or done.result()))

    def _infer(self, x: np.ndarray, sizes: list[int]) -> tuple[list | None, list | None]:
        """The batch's outputs, or — when the batched call failed — each request's own outputs or
        exception. Runs inline or in the worker thread."""
        run = self.model.run
        start = time.perf_counter()
        try:
            outputs = run(x)
        except Exception:  # noqa: BLE001 — whatever ONNX Runtime raised, find out whose rows did it
            if len(sizes) == 1:
                raise
        else:
            # A plain float store: atomic under the GIL, read on the loop's thread.
            self._row_seconds += ((time.perf_counter() - start) / len(x) - self._row_seconds) * ROW_SECONDS_WEIGHT
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
        """On the loop: give each request its results (or its error), then run what queued meanwhile."""
        try:
            self._hand_out(batch, outcome)
        except Exception as exc:  # noqa: BLE001 — never leave a request waiting, nor the queue stuck
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(exc)
        finally:
            self._next(loop)

    def _hand_out(self, batch: list, outcome) -> None:
        if isinstance(outcome, BaseException):  # a batch of one failed: that request's error
            outputs, each = None, [outcome]
        else:
            outputs, each = outcome
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
            if future.done():  # cancelled while its batch ran (deadline): nobody waits for it
                continue
            if faults:
                future.set_exception(NonFiniteOutput(list(faults)))
            else:
                future.set_result(mine)

    def _next(self, loop: asyncio.AbstractEventLoop) -> None:
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
        loop.call_soon(self._start, loop)
