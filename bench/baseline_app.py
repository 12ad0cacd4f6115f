"""Baseline (a) of the benchmark: the framework ceiling.

A bare aiohttp handler on the predict route that reads and parses the same JSON body the service
gets and answers a constant. Everything the service adds on top (auth, validation, cache,
inference, metrics, DB logging) shows up as the distance between this and the service.

Server settings mirror the service's (``access_log=None``, uvloop event loop) so the comparison is
about the work per request, not about how the server is run.

Usage: ``python -m bench.baseline_app --port 8101`` (the runner starts it; it is not a product).
"""
from __future__ import annotations

import argparse
import json

import orjson
from aiohttp import web

# Shaped like a real answer so the response size is in the same range as the service's.
_ANSWER = json.dumps({
    "model": "baseline", "version": "0", "cached": False,
    "predictions": [{"label": "setosa", "probabilities": {"setosa": 1.0, "versicolor": 0.0, "virginica": 0.0}}],
}).encode()


async def predict(request: web.Request) -> web.Response:
    """Parse the body as the service would (strict JSON, no NaN: orjson, the service's fast path),
    then return the constant answer."""
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise web.HTTPBadRequest(text='{"error": "malformed JSON"}', content_type="application/json") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text='{"error": "expected an object"}', content_type="application/json")
    return web.Response(body=_ANSWER, content_type="application/json")


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/api/v1/models/{name}/predict", predict)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", health)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="bare aiohttp baseline for the benchmark")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--no-uvloop", action="store_true", help="use asyncio's default event loop")
    args = parser.parse_args(argv)
    loop = None
    if not args.no_uvloop:
        import uvloop
        loop = uvloop.new_event_loop()
    web.run_app(make_app(), host=args.host, port=args.port, access_log=None, print=None, loop=loop)


if __name__ == "__main__":
    main()
