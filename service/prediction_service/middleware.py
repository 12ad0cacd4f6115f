"""HTTP middlewares: request metrics, and the guard of ``/api/v1/*`` (overload, timeout, auth).

Order (outermost first): metrics → errors → guard → handler. The guard answers a fast 503 with
``Retry-After`` once PREDICTION_MAX_IN_FLIGHT API requests are being handled, so the server stays
responsive under any load; health, readiness and metrics are never limited nor authenticated.
"""
from __future__ import annotations

import asyncio
import time

from aiohttp import web

from . import metrics
from .errors import ApiError
from .state import BODY_READ, STATE

API_PREFIX = "/api/v1/"
RETRY_AFTER_SECONDS = "1"


def _endpoint(request: web.Request) -> str:
    resource = request.match_info.route.resource
    # Unmatched paths share one label value: arbitrary client paths must not create new series.
    return resource.canonical if resource is not None else "unmatched"


# Metric children by label values: a .labels() lookup per request costs more than the cache.
# Bounded: endpoints are route templates (or "unmatched"), methods and statuses are few.
_children: dict[tuple[str, str, int], tuple] = {}
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


def _metric_children(endpoint: str, method: str, status: int) -> tuple:
    key = (endpoint, method, status)
    found = _children.get(key)
    if found is None:
        if method not in _METHODS:
            method = "other"  # arbitrary client methods must not create new series
        found = (metrics.requests_total.labels(endpoint, method, str(status)),
                 metrics.request_duration_seconds.labels(endpoint, method))
        if len(_children) < 10000:
            _children[key] = found
    return found


@web.middleware
async def metrics_middleware(request: web.Request, handler) -> web.StreamResponse:
    start = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        counter, histogram = _metric_children(_endpoint(request), request.method, status)
        counter.inc()
        histogram.observe(time.perf_counter() - start)


@web.middleware
async def guard_middleware(request: web.Request, handler) -> web.StreamResponse:
    if not request.path.startswith(API_PREFIX):
        return await handler(request)
    state = request.app[STATE]
    settings = state.settings
    if state.in_flight >= settings.max_in_flight:
        metrics.requests_rejected_total.labels("overload").inc()
        raise ApiError(503, "overloaded",
                       f"too many requests in flight (limit {settings.max_in_flight}); retry shortly",
                       headers={"Retry-After": RETRY_AFTER_SECONDS})
    state.in_flight += 1
    metrics.requests_in_progress.inc()
    try:
        state.auth.check(request.headers)
        timeout = asyncio.timeout(settings.request_timeout_seconds)
        try:
            async with timeout:
                return await handler(request)
        except TimeoutError:
            if not timeout.expired():
                raise
            metrics.requests_rejected_total.labels("timeout").inc()
            if not request.get(BODY_READ, True):
                raise ApiError(408, "request_timeout",
                               f"the request body did not arrive within {settings.request_timeout_seconds:g}s") from None
            raise ApiError(503, "timeout",
                           f"the request took longer than {settings.request_timeout_seconds:g}s; retry later",
                           headers={"Retry-After": RETRY_AFTER_SECONDS}) from None
    finally:
        state.in_flight -= 1
        metrics.requests_in_progress.dec()
