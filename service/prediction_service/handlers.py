"""Request handlers of every route (wired in app.py)."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from datetime import datetime, timezone

import orjson
from aiohttp import hdrs, web

from . import metrics
from .errors import ApiError
from .state import STATE
from .validation import check_content_type, feature_row, instances_of, parse_json

log = logging.getLogger(__name__)

# Larger batches run in a worker thread (ONNX Runtime releases the GIL) so the event loop keeps
# answering other requests; small ones run inline, where a thread hop would cost more than the model.
EXECUTOR_MIN_ROWS = 64
READY_CHECK_TIMEOUT = 1.0
_JSON = "application/json"


def _json(obj, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(obj).encode(), status=status, content_type=_JSON)


async def health(request: web.Request) -> web.Response:
    """Liveness: answers as long as the event loop runs; touches nothing else."""
    return _json({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    """Readiness: 200 when at least one model is loaded (degraded if Redis or the DB is down)."""
    state = request.app[STATE]
    loaded = state.registry.count
    redis_up = await state.redis.ping() if state.redis is not None else False
    database = "disabled"
    queue = 0
    if state.writer is not None:
        queue = state.writer.queue_depth
        try:
            database = "up" if await asyncio.wait_for(state.writer.healthy(), READY_CHECK_TIMEOUT) else "down"
        except Exception:  # noqa: BLE001 — a check that fails or hangs means "down"
            database = "down"
    if not loaded:
        status = "not_ready"
    elif redis_up and database != "down":
        status = "ready"
    else:
        status = "degraded"
    body = {"status": status, "models_loaded": loaded, "failed_models": state.registry.failures,
            "redis": "up" if redis_up else "down", "database": database, "db_queue_rows": queue}
    return _json(body, status=200 if loaded else 503)


async def metrics_endpoint(request: web.Request) -> web.Response:
    body, content_type = metrics.exposition()
    resp = web.Response(body=body)
    resp.headers["Content-Type"] = content_type
    return resp


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[STATE].openapi_body, content_type=_JSON)


async def list_models(request: web.Request) -> web.Response:
    return _json({"models": request.app[STATE].registry.describe()})


def _request_id(request: web.Request) -> str:
    supplied = request.headers.get("X-Request-ID")
    if supplied:
        try:
            return str(uuid.UUID(supplied))  # only well-formed UUIDs are trusted into the log table
        except ValueError:
            pass
    # 128 random bits as hex: as unique as uuid4, a fraction of its cost on the hot path.
    return os.urandom(16).hex()


async def predict(request: web.Request) -> web.Response:
    """POST /api/v1/models/{name}/predict — see validation.py for the accepted body."""
    start = time.perf_counter()
    state = request.app[STATE]
    settings = state.settings
    name = request.match_info["name"]
    version = request.query.get("version")
    versions = state.registry.models.get(name)
    if versions is None:
        known = ", ".join(sorted(state.registry.models)) or "none"
        raise ApiError(404, "model_not_found", f"no model named {name[:64]!r}; served models: {known}")
    model = versions.get(version) if version is not None else versions[state.registry.default_versions[name]]
    if model is None:
        raise ApiError(404, "version_not_found",
                       f"model {name!r} has no version {version[:64]!r}; available: {', '.join(sorted(versions))}")

    # The exact common header skips aiohttp's Content-Type parsing; anything else is parsed.
    if request.headers.get(hdrs.CONTENT_TYPE) != _JSON:
        check_content_type(request.content_type)
    length = request.content_length
    if length is not None and length > settings.max_body_bytes:
        raise ApiError(413, "body_too_large",
                       f"request body is {length} bytes; the limit is {settings.max_body_bytes} bytes")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "body_too_large",
                       f"request body exceeds the limit of {settings.max_body_bytes} bytes") from None

    instances = instances_of(parse_json(body), settings.max_batch)
    rows = [feature_row(inst, model, i) for i, inst in enumerate(instances)]
    n = len(rows)

    if model.cache:
        results, missing = await state.cache.lookup(model, rows)
    else:
        results, missing = [None] * n, list(range(n))
    if missing:
        todo = rows if len(missing) == n else [rows[i] for i in missing]
        if len(todo) >= EXECUTOR_MIN_ROWS:
            computed = await asyncio.get_running_loop().run_in_executor(None, model.predict, todo)
        else:
            computed = model.predict(todo)
        store = state.cache.store if model.cache else None
        for i, value in zip(missing, computed):
            results[i] = value
            if store is not None:
                store(model, rows[i], value)
    hits = n - len(missing)

    request_id = _request_id(request)
    if model.kind == "classifier":
        out = {"model": model.name, "version": model.version,
               "predictions": [r["label"] for r in results],
               "probabilities": [r["probabilities"] for r in results]}
    else:
        out = {"model": model.name, "version": model.version, "predictions": [r["value"] for r in results]}
    out["cached"] = hits == n
    out["cache_hits"] = hits
    out["request_id"] = request_id

    writer = state.writer
    if writer is not None:
        latency_ms = (time.perf_counter() - start) * 1000.0
        now = datetime.now(timezone.utc)
        # Records, not dicts: the writer takes them as they are (no per-row conversion).
        record, model_name, model_version = writer.Record, model.name, model.version
        missing_set = set(missing) if hits else None
        for i, (inst, value) in enumerate(zip(instances, results)):
            writer.submit(record(now, model_name, model_version, request_id, inst, value, latency_ms,
                                 bool(hits) and i not in missing_set))
    # orjson: several times faster than json.dumps; every value here is a plain str/float/int/dict.
    return web.Response(body=orjson.dumps(out), headers={hdrs.CONTENT_TYPE: _JSON, "X-Request-ID": request_id})
