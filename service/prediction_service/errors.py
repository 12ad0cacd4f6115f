"""JSON errors: ``{"error": {"code": "...", "message": "..."}}`` for every non-2xx answer
(``{"error": "..."}`` on the Open Inference Protocol's ``/v2`` paths).

Handlers raise :class:`ApiError`; :func:`handle_exception` (called by middleware.py) turns it —
and aiohttp's own HTTP exceptions (404, 405, 413 …) and anything unexpected — into that shape. Unexpected exceptions are
logged with their traceback server-side and answered with a generic 500 that leaks nothing; the
validators are meant to make that path unreachable for any client input.
"""
from __future__ import annotations

import json
import logging

from aiohttp import web

log = logging.getLogger(__name__)

V2_ROOT = "/v2"
V2_PREFIX = "/v2/"

# aiohttp's status-only exceptions, mapped to our stable codes.
_HTTP_CODES = {
    400: ("bad_request", "the request could not be parsed"),
    404: ("not_found", "no such endpoint"),
    405: ("method_not_allowed", "method not allowed on this endpoint"),
    408: ("request_timeout", "the request body did not arrive in time"),
    413: ("body_too_large", "request body is too large"),
    415: ("unsupported_media_type", "unsupported content type"),
}


class ApiError(Exception):
    """A client-visible error: HTTP status, stable machine code, message saying what is wrong."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


def _from_http_exception(exc: web.HTTPException) -> web.Response:
    code, default_message = _HTTP_CODES.get(exc.status, ("http_error", exc.reason))
    message = default_message
    if exc.status == 405 and isinstance(exc, web.HTTPMethodNotAllowed):
        message = f"method {exc.method} not allowed; use {', '.join(sorted(exc.allowed_methods))}"
    elif exc.status == 413 and isinstance(exc, web.HTTPRequestEntityTooLarge):
        message = exc.text.strip() or default_message
    headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after", "www-authenticate")}
    return error_response(exc.status, code, message, headers or None)


def v2_error(response: web.Response) -> web.Response:
    """The same error in the Open Inference Protocol's shape, ``{"error": "<message>"}``.

    The protocol answers a request it cannot serve with "typically 400": our 422 (JSON, but not
    valid input) is a 400 there; every other status and header is kept.
    """
    message = json.loads(response.body)["error"]["message"]
    status = 400 if response.status == 422 else response.status
    headers = {k: v for k, v in response.headers.items() if k.lower() in ("allow", "retry-after", "www-authenticate")}
    return web.Response(status=status, body=json.dumps({"error": message}).encode(),
                        content_type="application/json", headers=headers or None)


def handle_exception(request: web.Request, exc: Exception) -> web.StreamResponse:
    """The JSON answer for an exception raised while handling ``request`` (see middleware.py).

    Every error leaves as JSON, no traceback ever reaches the client; HTTP exceptions below 400
    (redirects etc.) are re-raised untouched. On ``/v2`` paths in that protocol's shape.
    """
    response = _error_for(request, exc)
    path = request.path
    if path == V2_ROOT or path.startswith(V2_PREFIX):
        return v2_error(response)
    return response


def _error_for(request: web.Request, exc: Exception) -> web.Response:
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.headers)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        return _from_http_exception(exc)
    # The last line of defence; validators should make this unreachable.
    log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
    return error_response(500, "internal_error", "internal error; the failure has been logged")

