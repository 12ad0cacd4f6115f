"""The aiohttp application: routes, middlewares, and the resources created once per process."""
from __future__ import annotations

import json
import logging

from aiohttp import web

from . import handlers, metrics, middleware
from .auth import Authenticator
from .cache import LocalCache, PredictionCache, RedisTier
from .config import Settings, redact_url
from .deadlines import Deadlines
from .middleware import service_middleware
from .models import ModelRegistry, load_models
from .oip_grpc import server as oip_grpc
from .openapi import build_openapi
from .repeats import Repeats
from .state import STATE, ServiceState
from .v2 import handlers as v2

log = logging.getLogger(__name__)

# API requests being handled, REST and gRPC: read when Prometheus scrapes.
metrics.requests_in_progress.set_function(lambda: middleware.in_progress() + oip_grpc.in_progress())

# Longer than nginx's default upstream keep-alive (60 s) so the proxy, not us, closes idle
# connections — otherwise nginx may reuse a connection we are closing and answer 502.
KEEPALIVE_TIMEOUT = 75.0


def add_routes(app: web.Application) -> None:
    app.router.add_get("/health", handlers.health, allow_head=False)
    app.router.add_get("/ready", handlers.ready, allow_head=False)
    app.router.add_get("/metrics", handlers.metrics_endpoint, allow_head=False)
    app.router.add_get("/api/openapi.json", handlers.openapi, allow_head=False)
    app.router.add_get("/api/v1/models", handlers.list_models, allow_head=False)
    app.router.add_post("/api/v1/models/{name}/predict", handlers.predict)
    v2.add_routes(app)


async def _external_clients(app: web.Application):
    """Redis client and prediction writer: created once at start-up, closed (flushed) at shutdown."""
    state = app[STATE]
    s = state.settings
    state.redis = RedisTier(s.redis_url, s.cache_ttl_seconds)
    state.cache.shared = state.redis
    state.redis.start()
    if s.db_logging:
        from .storage import PredictionWriter  # the storage package; imported only when logging is on
        from . import metrics

        state.writer = PredictionWriter(s.timescale_url, instance=s.instance, queue_max=s.db_queue_max,
                                        flush_interval=s.db_flush_interval_seconds,
                                        retention_days=s.retention_days, metrics=metrics)
        await state.writer.start()
        log.info("prediction log: writing to %s", redact_url(s.timescale_url))
    try:
        yield
    finally:
        # Runs after the server stopped accepting and in-flight requests finished (aiohttp's
        # shutdown order), so every prediction answered is in the writer's queue by now.
        if state.writer is not None:
            await state.writer.close()
        await state.redis.close()


async def _mark_shutting_down(app: web.Application) -> None:
    # aiohttp stops reading sockets once shutdown starts: a request whose body was still arriving
    # can never complete here, and the client should hear "retry elsewhere", not "you were slow".
    app[STATE].shutting_down = True


def create_app(settings: Settings, registry: ModelRegistry | None = None) -> web.Application:
    """Build the application; models are loaded now (or passed in), network clients on start-up."""
    if registry is None:
        registry = load_models(settings.model_path)
    app = web.Application(middlewares=[service_middleware],
                          client_max_size=settings.max_body_bytes)
    documents = {via: json.dumps(build_openapi(registry, settings.max_batch, settings.max_body_bytes,
                                               gateway=via)).encode() for via in (False, True)}
    local = LocalCache(settings.local_cache_size, settings.cache_ttl_seconds)
    app[STATE] = ServiceState(
        settings=settings, registry=registry, auth=Authenticator(settings.api_key, settings.jwt_secret),
        cache=PredictionCache(local, None),
        openapi_body=documents[False], openapi_gateway_body=documents[True],
        deadlines=Deadlines(settings.request_timeout_seconds),
        # As many as the in-process tier holds: an exact repeat is served while its results are cached.
        repeats=Repeats(local, settings.local_cache_size))
    add_routes(app)
    app.cleanup_ctx.append(_external_clients)
    # After the clients: gRPC calls start once they exist, and end before the writer flushes.
    grpc_listener = oip_grpc.GrpcListener()
    app.cleanup_ctx.append(grpc_listener.run)
    app.on_shutdown.append(_mark_shutting_down)
    app.on_shutdown.append(grpc_listener.stop)
    return app
