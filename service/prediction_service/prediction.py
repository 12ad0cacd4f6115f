"""The path every prediction takes, whichever API asked: model lookup, request body, cache and
model, prediction log. ``/api/v1`` (handlers.py) and ``/v2`` share it, so an answer is the same
whichever protocol carried the request.
"""
from __future__ import annotations

import asyncio
import os
import time
import uuid

from aiohttp import hdrs, web

from . import metrics
from .errors import ApiError
from .models import EXECUTOR_MIN_ROWS, Model, NonFiniteOutput
from .repeats import Answer, Repeat
from .state import ServiceState
from .validation import check_content_type

JSON_TYPE = "application/json"


def find_model(state: ServiceState, name: str, version: str | None) -> Model:
    """The named model at ``version`` (None: its default version); 404 naming what exists."""
    versions = state.registry.models.get(name)
    if versions is None:
        known = ", ".join(sorted(state.registry.models)) or "none"
        raise ApiError(404, "model_not_found", f"no model named {name[:64]!r}; served models: {known}")
    model = versions.get(version) if version is not None else versions[state.registry.default_versions[name]]
    if model is None:
        raise ApiError(404, "version_not_found",
                       f"model {name!r} has no version {version[:64]!r}; available: {', '.join(sorted(versions))}")
    return model


async def read_body(request: web.Request, max_bytes: int, content_types: tuple[str, ...] = (JSON_TYPE,)) -> bytes:
    """The whole request body, of one of ``content_types``, at most ``max_bytes`` (else 415 / 413)."""
    # The exact common header skips aiohttp's Content-Type parsing; anything else is parsed.
    if request.headers.get(hdrs.CONTENT_TYPE) not in content_types:
        check_content_type(request.content_type, content_types)
    length = request.content_length
    if length is not None and length > max_bytes:
        raise ApiError(413, "body_too_large", f"request body is {length} bytes; the limit is {max_bytes} bytes")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "body_too_large", f"request body exceeds the limit of {max_bytes} bytes") from None


async def predict_rows(state: ServiceState, model: Model, rows: list[list[float]]) -> tuple[list[dict], list[int]]:
    """One result per validated row, from the cache tiers or the model; and the rows the model computed.

    The one way to a prediction for every API (``/api/v1``, ``/v2``, and any other protocol): give
    it the request's validated rows in feature order (``validation.feature_row`` /
    ``validation.check_row``). A result is ``{"label", "probabilities"}`` (classifier) or
    ``{"value"}`` (regressor). The cache misses go to the model — through its adaptive-batching
    queue when the version batches (batching.py), else directly — and computed results are stored
    in the cache. A row the model gives no finite output for is a 422 (ApiError) for this request
    only. Then log the request with :func:`record_answer`.
    """
    n = len(rows)
    if model.cache:
        results, missing = await state.cache.lookup(model, rows)
    else:
        results, missing = [None] * n, list(range(n))
    if not missing:
        return results, missing
    todo = rows if len(missing) == n else [rows[i] for i in missing]
    try:
        if model.batcher is not None:  # adaptive batching (batching.py)
            computed = await model.batcher.predict(todo)
        elif len(todo) >= EXECUTOR_MIN_ROWS:
            computed = await asyncio.get_running_loop().run_in_executor(None, model.predict, todo)
        else:
            computed = model.predict(todo)
    except NonFiniteOutput as exc:
        first = missing[exc.rows[0]]
        raise ApiError(422, "non_finite_output",
                       f"instance {first}: model {model.name} v{model.version} gives no finite output for "
                       "these values; they are too far outside what it was trained on") from None
    store = state.cache.store if model.cache else None
    for i, value in zip(missing, computed):
        results[i] = value
        if store is not None:
            store(model, rows[i], value)
    return results, missing


def request_id(request: web.Request) -> str:
    """The client's X-Request-ID when it is a UUID, else a fresh random id."""
    return request_id_from(request.headers.get("X-Request-ID"))


def request_id_from(supplied: str | None) -> str:
    """``supplied`` (a client's request id: header or gRPC metadata) when it is a UUID, else a fresh random id."""
    if supplied:
        try:
            return str(uuid.UUID(supplied))  # only well-formed UUIDs are trusted into the log table
        except ValueError:
            pass
    # 128 random bits as hex: as unique as uuid4, a fraction of its cost on the hot path.
    return os.urandom(16).hex()


def serve_repeat(state: ServiceState, model: Model, repeat: Repeat, request: web.Request, start: float) -> str:
    """Count and log a remembered answer served again (every instance a local-cache hit, as the
    first time); returns the request's id to render it with."""
    model.local_hits.inc(len(repeat.cached))
    rid = request_id(request)
    if state.writer is not None:
        log_repeat(state.writer, model, rid, repeat, start)
    return rid


def record_answer(state: ServiceState, api: str, model: Model, body: bytes, header: str | None, rows: list,
                  results: list, missing: list[int], answer: Answer, instances: list, rid: str,
                  start: float) -> None:
    """After the slow path: remember the answer when every instance was a cache hit (so the same
    request again is a repeat), and queue its prediction-log rows."""
    if not missing:
        state.repeats.remember(api, model, body, header, rows, results, answer, instances, state.writer)
    if state.writer is not None:
        log_predictions(state.writer, model, rid, instances, results, missing, start)


async def acknowledge(state: ServiceState) -> None:
    """PREDICTION_DB_ACK_AFTER_WRITE: wait until the rows logged so far (this answer's among them) are
    committed, within PREDICTION_DB_ACK_TIMEOUT_SECONDS; counted by outcome either way."""
    committed = await state.writer.committed(state.settings.db_ack_timeout_seconds)
    _ACKS[committed].inc()


_ACKS = {True: metrics.db_acks_total.labels(outcome="committed"),
         False: metrics.db_acks_total.labels(outcome="not_committed")}


def log_predictions(writer, model: Model, request_id: str, inputs: list, results: list, missing: list[int],
                    start: float) -> None:
    """Queue one prediction-log row per instance (``inputs``: the instances as feature objects)."""
    latency_ms = (time.perf_counter() - start) * 1000.0
    now = time.time()
    # Records, not dicts: the writer takes them as they are (no per-row conversion).
    record, model_name, model_version = writer.Record, model.name, model.version
    hits = len(results) - len(missing)
    missing_set = set(missing) if hits else None
    for i, (inst, value) in enumerate(zip(inputs, results)):
        writer.submit(record(now, model_name, model_version, request_id, inst, value, latency_ms,
                             bool(hits) and i not in missing_set))


def log_repeat(writer, model: Model, request_id: str, repeat: Repeat, start: float) -> None:
    """The rows :func:`log_predictions` queues for an answer served again (every instance a cache hit)."""
    latency_ms = (time.perf_counter() - start) * 1000.0
    now = time.time()
    record, model_name, model_version = writer.Record, model.name, model.version
    for inp, out in repeat.log:
        writer.submit(record(now, model_name, model_version, request_id, inp, out, latency_ms, True))
