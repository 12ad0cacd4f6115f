"""Baseline (a) of the benchmark: the framework ceiling.

A bare aiohttp handler on the predict route that reads and parses the same JSON body the service
gets and answers a constant. Everything the service adds on top (auth, validation, cache,
inference, metrics, DB logging) shows up as the distance between this and the service.

Server settings mirror the service's (``access_log=None``, uvloop event loop) so the comparison is
about the work per request, not about how the server is run.

With ``--model-dir`` (``make bench-peers``) it is the baseline of the model servers instead: the same
handler also runs the model's ONNX Runtime session on the instance (built as every server there
builds it: bench/peers/apps/onnx_model.py), inline on the event loop, and answers the prediction in
the service's /api/v1 shape — parse, infer, answer, nothing else.

Usage: ``python -m bench.baseline_app --port 8101 [--model-dir service/models/iris/1]`` (the
runners start it; it is not a product).
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


def model_handler(model_dir: str):
    """A predict handler that runs the model in ``model_dir`` on the instance of each request."""
    from .peers.apps.onnx_model import OnnxModel
    model = OnnxModel(model_dir)

    async def predict_with_model(request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
            row = [float(body[name]) for name in model.features]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise web.HTTPBadRequest(text='{"error": "expected an object of numbers named %s"}'
                                     % ", ".join(model.features), content_type="application/json") from None
        labels, probs = model.run([row])
        return web.Response(body=orjson.dumps({
            "model": model.name, "version": model.version, "predictions": labels,
            "probabilities": [dict(zip(model.labels, p)) for p in probs.tolist()]}), content_type="application/json")

    return predict_with_model


def make_app(model_dir: str | None = None) -> web.Application:
    app = web.Application()
    app.router.add_post("/api/v1/models/{name}/predict", model_handler(model_dir) if model_dir else predict)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", health)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="bare aiohttp baseline for the benchmark")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--no-uvloop", action="store_true", help="use asyncio's default event loop")
    parser.add_argument("--model-dir", help="a model version folder (model.onnx + metadata.json): run it per request")
    args = parser.parse_args(argv)
    loop = None
    if not args.no_uvloop:
        import uvloop
        loop = uvloop.new_event_loop()
    web.run_app(make_app(args.model_dir), host=args.host, port=args.port, access_log=None, print=None, loop=loop)


if __name__ == "__main__":
    main()
