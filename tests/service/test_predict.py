"""Predictions through the HTTP API: single and batch, versions, the cache as a user sees it."""
from __future__ import annotations

import asyncio

import pytest

from service_support import AUTH, IRIS

PREDICT = "/api/v1/models/{}/predict"
SETOSA = IRIS
VIRGINICA = {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.8, "petal_width": 2.2}


async def test_single_instance_returns_label_and_probabilities(client):
    resp = await client.post(PREDICT.format("iris"), json=SETOSA, headers=AUTH)
    assert resp.status == 200
    body = await resp.json()
    assert body["model"] == "iris" and body["version"] == "1"  # v1 is marked default in its metadata
    assert body["predictions"] == ["setosa"]
    (proba,) = body["probabilities"]
    assert set(proba) == {"setosa", "versicolor", "virginica"}
    assert proba["setosa"] > 0.5 and abs(sum(proba.values()) - 1.0) < 1e-3
    assert body["cached"] is False
    assert resp.headers["X-Request-ID"] == body["request_id"]


async def test_batch_keeps_request_order(client):
    resp = await client.post(PREDICT.format("iris"), json={"instances": [VIRGINICA, SETOSA, VIRGINICA]}, headers=AUTH)
    assert resp.status == 200
    body = await resp.json()
    assert body["predictions"] == ["virginica", "setosa", "virginica"]
    assert len(body["probabilities"]) == 3


async def test_batch_and_single_agree(client):
    single = await (await client.post(PREDICT.format("iris") + "?version=2", json=VIRGINICA, headers=AUTH)).json()
    batch = await (await client.post(PREDICT.format("iris") + "?version=2",
                                     json={"instances": [SETOSA, VIRGINICA]}, headers=AUTH)).json()
    assert batch["predictions"][1] == single["predictions"][0]
    assert batch["probabilities"][1] == single["probabilities"][0]


async def test_large_batch_runs_in_worker_thread_and_answers_all(client):
    instances = [dict(SETOSA, sepal_length=4.0 + i / 1000) for i in range(500)]
    resp = await client.post(PREDICT.format("iris"), json={"instances": instances}, headers=AUTH)
    assert resp.status == 200
    body = await resp.json()
    assert len(body["predictions"]) == 500 and set(body["predictions"]) == {"setosa"}


async def test_versions_are_served_side_by_side(client):
    v1 = await (await client.post(PREDICT.format("iris") + "?version=1", json=SETOSA, headers=AUTH)).json()
    v2 = await (await client.post(PREDICT.format("iris") + "?version=2", json=SETOSA, headers=AUTH)).json()
    assert (v1["version"], v2["version"]) == ("1", "2")
    assert v1["predictions"] == v2["predictions"] == ["setosa"]
    # Different models (forest vs logistic regression) give different probabilities.
    assert v1["probabilities"] != v2["probabilities"]


async def test_regressor_returns_numbers(client):
    models = await (await client.get("/api/v1/models", headers=AUTH)).json()
    diabetes = next(m for m in models["models"] if m["name"] == "diabetes")
    features = [f["name"] for f in diabetes["versions"][0]["features"]]
    resp = await client.post(PREDICT.format("diabetes"), json={f: 0.01 for f in features}, headers=AUTH)
    assert resp.status == 200
    body = await resp.json()
    assert "probabilities" not in body
    (value,) = body["predictions"]
    assert isinstance(value, float) and 25 < value < 346  # the data set's target range


async def test_models_endpoint_lists_versions_and_schema(client):
    resp = await client.get("/api/v1/models", headers=AUTH)
    assert resp.status == 200
    models = {m["name"]: m for m in (await resp.json())["models"]}
    assert set(models) == {"iris", "iris_ensemble", "diabetes"}
    assert models["iris"]["default_version"] == "1"
    versions = {v["version"]: v for v in models["iris"]["versions"]}
    assert set(versions) == {"1", "2"}
    assert [f["name"] for f in versions["1"]["features"]] == list(IRIS)
    assert versions["1"]["labels"] == ["setosa", "versicolor", "virginica"]
    assert models["diabetes"]["versions"][0]["cache"] is False
    assert [versions["1"]["cache_tier"], versions["2"]["cache_tier"], models["diabetes"]["versions"][0]["cache_tier"]] \
        == ["local", "shared", "off"]
    # Adaptive batching as each metadata.json sets it (the service-wide default, 1 = off, elsewhere).
    assert [versions["1"]["max_batch_size"], versions["2"]["max_batch_size"],
            models["iris_ensemble"]["versions"][0]["max_batch_size"]] == [32, 1, 64]
    assert versions["1"]["max_batch_delay_us"] == 0


async def test_repeat_is_served_from_cache(client):
    first = await (await client.post(PREDICT.format("iris"), json=VIRGINICA, headers=AUTH)).json()
    second = await (await client.post(PREDICT.format("iris"), json=VIRGINICA, headers=AUTH)).json()
    assert first["cached"] is False
    assert second["cached"] is True
    assert second["predictions"] == first["predictions"]
    assert second["probabilities"] == first["probabilities"]


async def test_cache_key_ignores_key_order_and_int_vs_float(client):
    await client.post(PREDICT.format("iris"), json={"sepal_length": 6.0, "sepal_width": 3.0,
                                                     "petal_length": 4.0, "petal_width": 1.0}, headers=AUTH)
    reordered = {"petal_width": 1, "petal_length": 4, "sepal_width": 3, "sepal_length": 6}
    body = await (await client.post(PREDICT.format("iris"), json=reordered, headers=AUTH)).json()
    assert body["cached"] is True


async def test_cache_is_per_version(client):
    await client.post(PREDICT.format("iris") + "?version=1", json=VIRGINICA, headers=AUTH)
    body = await (await client.post(PREDICT.format("iris") + "?version=2", json=VIRGINICA, headers=AUTH)).json()
    assert body["cached"] is False


async def test_batch_mixes_cached_and_new_instances(client):
    await client.post(PREDICT.format("iris"), json=SETOSA, headers=AUTH)
    body = await (await client.post(PREDICT.format("iris"), json={"instances": [SETOSA, VIRGINICA]},
                                    headers=AUTH)).json()
    assert body["cache_hits"] == 1 and body["cached"] is False
    assert body["predictions"] == ["setosa", "virginica"]


async def test_model_with_cache_off_is_never_cached(client, redis_server):
    models = await (await client.get("/api/v1/models", headers=AUTH)).json()
    diabetes = next(m for m in models["models"] if m["name"] == "diabetes")
    instance = {f["name"]: 0.02 for f in diabetes["versions"][0]["features"]}
    for _ in range(3):
        body = await (await client.post(PREDICT.format("diabetes"), json=instance, headers=AUTH)).json()
        assert body["cached"] is False
    assert not [k for k in redis_server.client().keys("pred:diabetes:*")]


@pytest.mark.parametrize("path", ["/health", "/ready", "/metrics", "/api/openapi.json"])
async def test_public_endpoints_need_no_auth(client, path):
    resp = await client.get(path)
    assert resp.status == 200


async def test_ready_reports_models_and_dependencies(client):
    body = await (await client.get("/ready")).json()
    assert body == {"status": "ready", "models_loaded": 4, "failed_models": [], "redis": "up",
                    "database": "disabled", "storage": "disabled", "db_queue_rows": 0}


async def test_local_tier_model_never_touches_redis(client, redis_server):
    """iris v1 is configured cache "local": repeats are cached in-process, Redis stays empty."""
    await client.post(PREDICT.format("iris") + "?version=1", json=VIRGINICA, headers=AUTH)
    body = await (await client.post(PREDICT.format("iris") + "?version=1", json=VIRGINICA, headers=AUTH)).json()
    assert body["cached"] is True
    await client.post(PREDICT.format("iris") + "?version=2", json=VIRGINICA, headers=AUTH)
    deadline = asyncio.get_running_loop().time() + 60  # the background write: a liveness bound
    # The shared-tier write of v2 is the witness that writes did happen.
    while not redis_server.client().keys("pred:iris:2:*") and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    assert redis_server.client().keys("pred:iris:2:*")
    assert not redis_server.client().keys("pred:iris:1:*")
