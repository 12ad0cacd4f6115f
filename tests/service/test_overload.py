"""Bounded concurrency and per-request timeout: fast, explicit refusals instead of a hung server.

Requests are held "in flight" deterministically by sending their headers and only part of the
body: the service has admitted them and is waiting for the rest.
"""
from __future__ import annotations

import asyncio
import json

from service_support import API_KEY, AUTH, IRIS, wait_in_flight
from prediction_service.app import create_app

BODY = json.dumps(IRIS).encode()


async def open_partial_request(port: int):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write((f"POST /api/v1/models/iris/predict HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\n"
                  f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n").encode() + BODY[:10])
    await writer.drain()
    return reader, writer


async def finish(reader, writer) -> int:
    writer.write(BODY[10:])
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    return int(status_line.split()[1])


async def test_over_the_limit_is_a_fast_503_with_retry_after(aiohttp_client, make_settings):
    app = create_app(make_settings(max_in_flight=2, request_timeout_seconds=60))
    client = await aiohttp_client(app)
    held = [await open_partial_request(client.server.port) for _ in range(2)]
    await wait_in_flight(app, 2)

    resp = await client.post("/api/v1/models/iris/predict", json=IRIS, headers=AUTH)
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"
    error = (await resp.json())["error"]
    assert error["code"] == "overloaded" and "limit 2" in error["message"]
    # Probes are never limited: the orchestrator must still see the instance alive.
    assert (await client.get("/health")).status == 200
    assert (await client.get("/metrics")).status == 200

    # The admitted requests complete normally, and capacity comes back.
    assert [await finish(r, w) for r, w in held] == [200, 200]
    await wait_in_flight(app, 0)
    assert (await client.post("/api/v1/models/iris/predict", json=IRIS, headers=AUTH)).status == 200


async def test_body_that_never_arrives_times_out_with_408(aiohttp_client, make_settings):
    app = create_app(make_settings(request_timeout_seconds=0.3))
    client = await aiohttp_client(app)
    reader, writer = await open_partial_request(client.server.port)
    head = await asyncio.wait_for(reader.read(4096), timeout=30)
    writer.close()
    assert head.startswith(b"HTTP/1.1 408")
    assert b'"code": "request_timeout"' in head
    await wait_in_flight(app, 0)  # the slot is released


async def test_slow_handler_times_out_with_503_and_releases_its_slot(aiohttp_client, make_settings):
    """The timeout cancels only the request's own handler; the connection keeps serving."""
    app = create_app(make_settings(request_timeout_seconds=0.2))

    async def slow(request):
        await asyncio.sleep(30)

    app.router.add_get("/api/v1/slow", slow)
    client = await aiohttp_client(app)
    resp = await client.get("/api/v1/slow", headers=AUTH)
    assert resp.status == 503 and resp.headers["Retry-After"] == "1"
    assert (await resp.json())["error"]["code"] == "timeout"
    await wait_in_flight(app, 0)
    # Same keep-alive connection, next request: served normally.
    assert (await client.post("/api/v1/models/iris/predict", json=IRIS, headers=AUTH)).status == 200
