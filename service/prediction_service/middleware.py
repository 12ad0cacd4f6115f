"""The one HTTP middleware: request metrics, JSON errors, and the guard of ``/api/v1/*`` and ``/v2``.

What it does, outermost first: metrics (every request counted, with the status it finally got
and the API it belongs to) → errors (every failure leaves as the JSON error shape, see errors.py)
→ guard (``/api/v1/*`` and ``/v2*`` but the V2 health APIs: overload, auth, per-request timeout)
→ handler. The guard answers a fast 503 with
``Retry-After`` once PREDICTION_MAX_IN_FLIGHT API requests are being handled, so the server stays
responsive under any load; health, readiness and metrics are never limited nor authenticated.

Why one middleware and not three: each aiohttp middleware layer is a coroutine frame and a
partial() per request; on a cached prediction that overhead was a measurable share of the CPU.
"""
from __future__ import annotations

import asyncio
import time

from aiohttp import web

from . import metrics
from .errors import V2_PREFIX, V2_ROOT, ApiError, handle_exception
from .prediction import acknowledge
from .state import STATE
from .v2.handlers import PUBLIC_ROUTES as V2_PUBLIC_ROUTES

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
        api = "v1" if endpoint.startswith(API_PREFIX) else "v2" if endpoint.startswith(V2_ROOT) else "none"
        found = (metrics.requests_total.labels(endpoint, method, str(status), api),
                 metrics.request_duration_seconds.labels(endpoint, method, api))
        if len(_children) < 10000:
            _children[key] = found
    return found


# API requests being handled by this process. The gauge reads it when scraped (app.py wires it): a
# Gauge.inc()/dec() pair per request takes a lock twice, for a value nobody reads between scrapes.
_in_progress = 0


def in_progress() -> int:
    return _in_progress


_rejected_overload = metrics.requests_rejected_total.labels("overload")
_rejected_timeout = metrics.requests_rejected_total.labels("timeout")


@web.middleware
async def service_middleware(request: web.Request, handler) -> web.StreamResponse:
    global _in_progress
    start = time.perf_counter()
    status = 500  # what is counted if the request dies of something else (e.g. cancellation)
    endpoint = _endpoint(request)
    try:
        try:
            path = request.path
            if not (path.startswith(API_PREFIX) or ((path.startswith(V2_PREFIX) or path == V2_ROOT)
                                                    and endpoint not in V2_PUBLIC_ROUTES)):
                response = await handler(request)
            else:
                # The guard: overload limit, auth and the per-request timeout. Inline rather than a
                # coroutine of its own, which would cost a frame per request.
                state = request.app[STATE]
                settings = state.settings
                if state.in_flight >= settings.max_in_flight:
                    _rejected_overload.inc()
                    raise ApiError(503, "overloaded",
                                   f"too many requests in flight (limit {settings.max_in_flight}); retry shortly",
                                   headers={"Retry-After": RETRY_AFTER_SECONDS})
                state.in_flight += 1
                _in_progress += 1
                try:
                    state.auth.check(request.headers)
                    # The timeout cancels this task (request.task is the connection's): one shared
                    # timer (deadlines.py); our cancel is told from anyone else's by `fired` + uncancel().
                    task = asyncio.current_task()
                    deadlines = state.deadlines
                    cancelling = task.cancelling()
                    deadlines.add(task)
                    writer = state.writer if settings.db_ack_after_write else None
                    logged = writer.submitted if writer is not None else 0
                    try:
                        response = await handler(request)
                        if writer is not None and writer.submitted != logged and response.status == 200:
                            await acknowledge(state)  # PREDICTION_DB_ACK_AFTER_WRITE
                    except asyncio.CancelledError:
                        if task not in deadlines.fired:
                            raise  # not our timeout
                        deadlines.fired.discard(task)
                        if task.uncancel() > cancelling:
                            raise  # someone else cancelled this task too: let that through
                        raise _timed_out(request, state) from None
                    finally:
                        deadlines.remove(task)
                        if deadlines.fired and task in deadlines.fired:
                            # expired, but the handler swallowed our cancel: withdraw it (as asyncio.timeout does)
                            deadlines.fired.discard(task)
                            task.uncancel()
                finally:
                    state.in_flight -= 1
                    _in_progress -= 1
        except Exception as exc:  # noqa: BLE001 — every error leaves as JSON (errors.handle_exception)
            response = handle_exception(request, exc)
        status = response.status
        return response
    finally:
        counter, histogram = _metric_children(endpoint, request.method, status)
        counter.inc()
        histogram.observe(time.perf_counter() - start)


def _timed_out(request: web.Request, state) -> ApiError:
    """The answer to a request whose time ran out: 408 while its body was still arriving, else 503."""
    _rejected_timeout.inc()
    timeout = state.settings.request_timeout_seconds
    if not request.content.is_eof() and state.shutting_down:  # we stopped reading, not the client
        return ApiError(503, "shutting_down", "this instance is shutting down; retry the request",
                        headers={"Retry-After": RETRY_AFTER_SECONDS})
    if not request.content.is_eof():  # the body was still arriving
        return ApiError(408, "request_timeout", f"the request body did not arrive within {timeout:g}s")
    return ApiError(503, "timeout", f"the request took longer than {timeout:g}s; retry later",
                    headers={"Retry-After": RETRY_AFTER_SECONDS})
