"""Request handlers of every route (wired in app.py)."""
from __future__ import annotations

import asyncio
import json
import logging
import time

import orjson
from aiohttp import hdrs, web

from . import metrics
from .prediction import find_model, predict_rows, read_body, record_answer, request_id, serve_repeat
from .repeats import Answer
from .state import STATE
from .validation import feature_row, instances_of, parse_json

log = logging.getLogger(__name__)

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
    database = storage = "disabled"
    queue = 0
    if state.writer is not None:
        queue = state.writer.queue_depth
        try:
            database = "up" if await asyncio.wait_for(state.writer.healthy(), READY_CHECK_TIMEOUT) else "down"
        except Exception:  # noqa: BLE001 — a check that fails or hangs means "down"
            database = "down"
        storage = state.writer.storage_mode
    if not loaded:
        status = "not_ready"
    elif redis_up and database != "down":
        status = "ready"
    else:
        status = "degraded"
    body = {"status": status, "models_loaded": loaded, "failed_models": state.registry.failures,
            "redis": "up" if redis_up else "down", "database": database, "storage": storage,
            "db_queue_rows": queue}
    return _json(body, status=200 if loaded else 503)


async def metrics_endpoint(request: web.Request) -> web.Response:
    body, content_type = metrics.exposition()
    resp = web.Response(body=body)
    resp.headers["Content-Type"] = content_type
    return resp


async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI document; through the gateway (which always sets X-Forwarded-Proto) its own variant."""
    state = request.app[STATE]
    via_gateway = hdrs.X_FORWARDED_PROTO in request.headers
    return web.Response(body=state.openapi_gateway_body if via_gateway else state.openapi_body, content_type=_JSON)


async def list_models(request: web.Request) -> web.Response:
    return _json({"models": request.app[STATE].registry.describe()})


API = "v1"  # the requests this module answers, as the remembered answers name them (repeats.py)


async def predict(request: web.Request) -> web.Response:
    """POST /api/v1/models/{name}/predict — see validation.py for the accepted body."""
    start = time.perf_counter()
    state = request.app[STATE]
    settings = state.settings
    model = find_model(state, request.match_info["name"], request.query.get("version"))
    body = await read_body(request, settings.max_body_bytes)
    repeat = state.repeats.get(API, model, body)
    if repeat is not None:  # the same request again, every instance still cached: as the last time
        return _response(repeat.answer, serve_repeat(state, model, repeat, request, start))

    instances = instances_of(parse_json(body), settings.max_batch)
    rows = [feature_row(inst, model, i) for i, inst in enumerate(instances)]
    results, missing = await predict_rows(state, model, rows)
    hits = len(rows) - len(missing)
    rid = request_id(request)
    answer = _answer(model, results, hits)
    record_answer(state, API, model, body, None, rows, results, missing, answer, instances, rid, start)
    return _response(answer, rid)


def _answer(model, results: list[dict], hits: int) -> Answer:
    """``{"model", "version", "predictions", ["probabilities",] "cached", "cache_hits", "request_id"}``."""
    if model.kind == "classifier":
        out = {"model": model.name, "version": model.version,
               "predictions": [r["label"] for r in results],
               "probabilities": [r["probabilities"] for r in results]}
    else:
        out = {"model": model.name, "version": model.version, "predictions": [r["value"] for r in results]}
    out["cached"] = hits == len(results)
    out["cache_hits"] = hits
    # orjson: several times faster than json.dumps; every value here is a plain str/float/int/dict.
    return Answer(orjson.dumps(out)[:-1] + b',"request_id":', None, b"}")


def _response(answer: Answer, rid: str) -> web.Response:
    return web.Response(body=answer.render(rid)[0], headers={hdrs.CONTENT_TYPE: _JSON, "X-Request-ID": rid})
