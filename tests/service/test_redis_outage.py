"""Redis is the shared cache tier: its loss degrades the service, never fails a request."""
from __future__ import annotations

import asyncio

import pytest

from service_support import AUTH, IRIS
from metrics_text import sample
from prediction_service.app import create_app

URL = "/api/v1/models/iris/predict?version=2"  # the demo version with the shared (Redis) tier


def instance(i: int) -> dict:
    return dict(IRIS, sepal_length=4.0 + i / 100)


async def eventually(check, timeout: float = 60.0):  # a liveness bound, not a speed check
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value or asyncio.get_running_loop().time() > deadline:
            return value
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_redis_killed_then_back(aiohttp_client, make_settings, redis_factory):
    redis = redis_factory()
    settings = make_settings(redis_url=redis.url)
    client = await aiohttp_client(create_app(settings))

    # Healthy: a new prediction reaches Redis in the background.
    assert (await (await client.post(URL, json=instance(0), headers=AUTH)).json())["cached"] is False
    assert await eventually(lambda: _async(len(redis.client().keys("pred:iris:2:*")) == 1))

    errors_before = sample(await (await client.get("/metrics")).text(),
                           "prediction_service_cache_errors_total", operation="get")
    redis.stop()

    # Outage: new instances are answered by the model, repeats by the local tier; all 200.
    for i in range(1, 40):
        resp = await client.post(URL, json=instance(i), headers=AUTH)
        assert resp.status == 200
        assert (await resp.json())["predictions"] == ["setosa"]
    repeat = await (await client.post(URL, json=instance(0), headers=AUTH)).json()
    assert repeat["cached"] is True
    ready = await client.get("/ready")
    assert ready.status == 200
    assert (await ready.json())["status"] == "degraded" and (await ready.json())["redis"] == "down"
    metrics = await (await client.get("/metrics")).text()
    assert sample(metrics, "prediction_service_cache_errors_total", operation="get") > errors_before

    # Redis returns (empty): the service reconnects by itself and the shared tier fills again.
    redis.start()
    assert await eventually(lambda: _ready_redis(client), timeout=15)
    assert (await client.post(URL, json=instance(100), headers=AUTH)).status == 200
    assert await eventually(lambda: _async(len(redis.client().keys("pred:iris:2:*")) >= 1), timeout=15)

    # A second replica (empty local tier) gets that prediction from Redis.
    other = await aiohttp_client(create_app(settings))
    body = await (await other.post(URL, json=instance(100), headers=AUTH)).json()
    assert body["cached"] is True
    metrics = await (await other.get("/metrics")).text()
    assert sample(metrics, "prediction_service_cache_hits_total", model="iris", tier="redis") >= 1


async def test_replicas_share_results_through_redis(aiohttp_client, make_settings, redis_server):
    settings = make_settings()
    first = await aiohttp_client(create_app(settings))
    second = await aiohttp_client(create_app(settings))
    await first.post(URL, json=instance(7), headers=AUTH)
    assert await eventually(lambda: _async(bool(redis_server.client().keys("pred:iris:2:*"))))
    body = await (await second.post(URL, json=instance(7), headers=AUTH)).json()
    assert body["cached"] is True


async def test_redis_unreachable_from_start(aiohttp_client, make_settings):
    """Starting while Redis is down is fine: predictions work, /ready says degraded."""
    from harness.net import free_port

    client = await aiohttp_client(create_app(make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0")))
    for _ in range(2):
        assert (await client.post(URL, json=IRIS, headers=AUTH)).status == 200
    ready = await client.get("/ready")
    assert ready.status == 200 and (await ready.json())["redis"] == "down"


async def _async(value):
    return value


async def _ready_redis(client) -> bool:
    return (await (await client.get("/ready")).json())["redis"] == "up"
