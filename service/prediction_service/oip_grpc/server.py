"""The gRPC listener (``grpc.aio``, in the aiohttp application's event loop) and what surrounds each call.

Per call, as the HTTP middleware does for REST (middleware.py), outermost first: request metrics
(``api="grpc"``, ``status`` the gRPC status code's name) → errors (every failure leaves as a gRPC
status with a message: an ApiError by the table in :func:`status_code`, anything unexpected as
INTERNAL and logged; never UNKNOWN) → guard (ServerMetadata, ModelMetadata and ModelInfer: the
in-flight limit shared with REST, auth from the ``x-api-key`` or ``authorization`` metadata, the
per-request timeout) → handler (handlers.py).

The message size limit is gRPC's own (``grpc.max_receive_message_length`` = PREDICTION_MAX_BODY_BYTES):
a larger request is refused with RESOURCE_EXHAUSTED before it reaches a handler.
"""
from __future__ import annotations

import asyncio
import logging
import time

import grpc
from aiohttp import web
from google.protobuf.message import DecodeError

from .. import metrics
from ..errors import ApiError
from ..prediction import request_id_from
from ..state import STATE, ServiceState
from . import handlers
from .messages import SERVICE, SERVICE_NAME, message_class

log = logging.getLogger(__name__)

API = "grpc"  # the api label of these calls' request metrics
# The RPCs, and whether the guard applies; the three health RPCs are open, as on /v2.
RPCS = {
    "ServerLive": (handlers.server_live, False),
    "ServerReady": (handlers.server_ready, False),
    "ModelReady": (handlers.model_ready, False),
    "ServerMetadata": (handlers.server_metadata, True),
    "ModelMetadata": (handlers.model_metadata, True),
    "ModelInfer": (handlers.model_infer, True),
}
INTERNAL_MESSAGE = "internal error; the failure has been logged"


class GrpcPortError(Exception):
    """The gRPC port could not be bound; ``str(err)`` is one line for the operator."""


def status_code(error: ApiError) -> grpc.StatusCode:
    """The gRPC status of an error the REST API answers with ``error.status`` (grpc/grpc's
    doc/http-grpc-status-mapping.md where it has one; limits as grpc's own servers report them)."""
    status, code = error.status, error.code
    if status == 401:
        return grpc.StatusCode.UNAUTHENTICATED
    if status == 404:
        return grpc.StatusCode.NOT_FOUND
    if status == 413 or code == "overloaded":  # gRPC's maximum_concurrent_rpcs answers the same
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if status == 408 or code == "timeout":
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if status == 503:
        return grpc.StatusCode.UNAVAILABLE
    if 400 <= status < 500:  # 400, 415, 422: the request is wrong as sent
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.INTERNAL


class Call:
    """What a handler may ask of its call: the client's metadata and the request id."""

    __slots__ = ("context", "_metadata")

    def __init__(self, context: grpc.aio.ServicerContext):
        self.context = context
        self._metadata = None

    def metadata(self) -> dict:
        """The client's metadata by (lower-case) key; the last value of a repeated key."""
        if self._metadata is None:
            self._metadata = {m.key: m.value for m in self.context.invocation_metadata() or ()}
        return self._metadata

    def credentials(self) -> dict:
        """The metadata auth.Authenticator reads, under the header names it reads them by."""
        md = self.metadata()
        return {header: md[key] for key, header in (("x-api-key", "X-API-Key"), ("authorization", "Authorization"))
                if key in md and isinstance(md[key], str)}

    def request_id(self) -> str:
        """The client's ``x-request-id`` when it is a UUID, else a fresh one; sent back as trailing metadata."""
        supplied = self.metadata().get("x-request-id")
        rid = request_id_from(supplied if isinstance(supplied, str) else None)
        self.context.set_trailing_metadata((("x-request-id", rid),))
        return rid


# API calls being handled (the in-progress gauge adds them to REST's; app.py wires it).
_in_progress = 0


def in_progress() -> int:
    return _in_progress


_rejected_overload = metrics.requests_rejected_total.labels("overload")
_rejected_timeout = metrics.requests_rejected_total.labels("timeout")


async def _guarded(state: ServiceState, handler, request, call: Call):
    """The in-flight limit (shared with REST), auth and the per-request timeout around ``handler``."""
    global _in_progress
    settings = state.settings
    if state.in_flight >= settings.max_in_flight:
        _rejected_overload.inc()
        raise ApiError(503, "overloaded", f"too many requests in flight (limit {settings.max_in_flight}); retry shortly")
    state.in_flight += 1
    _in_progress += 1
    try:
        state.auth.check(call.credentials())
        timeout = settings.request_timeout_seconds
        limit = asyncio.timeout(timeout)
        try:
            async with limit:
                return await handler(state, request, call)
        except TimeoutError:
            if not limit.expired():
                raise
            _rejected_timeout.inc()
            raise ApiError(503, "timeout", f"the request took longer than {timeout:g}s; retry later") from None
    finally:
        state.in_flight -= 1
        _in_progress -= 1


def _method(state: ServiceState, name: str, handler, guarded: bool) -> grpc.RpcMethodHandler:
    endpoint = f"/{SERVICE_NAME}/{name}"
    method = SERVICE.methods_by_name[name]
    request_class = message_class(method.input_type.full_name)
    children: dict[grpc.StatusCode, tuple] = {}  # request metrics by status: a .labels() lookup costs more

    def count(code: grpc.StatusCode, seconds: float) -> None:
        found = children.get(code)
        if found is None:
            found = children[code] = (metrics.requests_total.labels(endpoint, "POST", code.name, API),
                                      metrics.request_duration_seconds.labels(endpoint, "POST", API))
        found[0].inc()
        found[1].observe(seconds)

    async def call(body: bytes, context: grpc.aio.ServicerContext):
        start = time.perf_counter()
        # Counted if the call ends otherwise: the client cancelled it or its own deadline passed.
        code = grpc.StatusCode.CANCELLED
        try:
            try:
                # Parsed here, not by gRPC, whose failure to parse would be INTERNAL: bad bytes are the client's.
                request = request_class.FromString(body)
                c = Call(context)
                response = await (_guarded(state, handler, request, c) if guarded else handler(state, request, c))
            except DecodeError:
                code, message = (grpc.StatusCode.INVALID_ARGUMENT,
                                 f"the request is not a valid {method.input_type.full_name} message")
            except ApiError as exc:
                code, message = status_code(exc), exc.message
            except Exception as exc:  # noqa: BLE001 — a status and a message for every failure, never UNKNOWN
                log.error("unhandled error in %s", endpoint, exc_info=exc)
                code, message = grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE
            else:
                code = grpc.StatusCode.OK
                return response
            await context.abort(code, message)  # raises: the call ends with this status
        finally:
            count(code, time.perf_counter() - start)

    return grpc.unary_unary_rpc_method_handler(
        call, response_serializer=message_class(method.output_type.full_name).SerializeToString)


def service_handler(state: ServiceState) -> grpc.GenericRpcHandler:
    """Every RPC of the service, bound to ``state``."""
    if set(RPCS) != {m.name for m in SERVICE.methods}:
        raise RuntimeError(f"the protocol's RPCs {sorted(m.name for m in SERVICE.methods)} and the handlers "
                           f"{sorted(RPCS)} differ")
    return grpc.method_handlers_generic_handler(
        SERVICE_NAME, {name: _method(state, name, handler, guarded) for name, (handler, guarded) in RPCS.items()})


class GrpcListener:
    """The application's gRPC server: started with it (``run``, a cleanup context, after the Redis
    client and the prediction writer exist) and stopped on shutdown (``stop``, an on_shutdown
    signal): new calls are refused, calls in progress get the request timeout to finish, and only
    then does the writer flush."""

    def __init__(self) -> None:
        self._server: grpc.aio.Server | None = None
        self.port: int | None = None

    async def run(self, app: web.Application):
        state = app[STATE]
        s = state.settings
        if s.grpc_port:
            await self._start(state, s.host, s.grpc_port)
        try:
            yield
        finally:
            await self.stop(app)

    async def _start(self, state: ServiceState, host: str, port: int) -> None:
        server = grpc.aio.server(options=[
            # Without this, gRPC binds with SO_REUSEPORT: a second instance on the same port would
            # silently share it instead of failing.
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", state.settings.max_body_bytes),
        ])
        server.add_generic_rpc_handlers((service_handler(state),))
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            self.port = server.add_insecure_port(address)
        except RuntimeError:
            raise GrpcPortError(f"PREDICTION_GRPC_PORT: cannot listen on {address} for gRPC: the port is in use "
                                "or the address is not this host's; choose another port (0 turns gRPC off)") from None
        await server.start()
        self._server = server
        log.info("serving the Open Inference Protocol over gRPC on %s", address)

    async def stop(self, app: web.Application) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop(app[STATE].settings.request_timeout_seconds + 1.0)
