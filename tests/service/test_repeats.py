"""Exact repeats (repeats.py): a request answered again from its remembered answer gets, byte for
byte, what the slow path gives for it — body and headers, log rows, metrics — and stops being
served that way as soon as the slow path's answer could differ (cache TTL, eviction, another model)."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid

import numpy as np
import psycopg2
import pytest
import tritonclient.http as triton

from metrics_text import sample
from service_support import AUTH, IRIS
from prediction_service.app import create_app
from prediction_service.state import STATE
from prediction_service.storage import apply_migrations

FEATURES = list(IRIS)
ROW = [IRIS[f] for f in FEATURES]
OTHER = {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.8, "petal_width": 2.2}
PREDICT = "/api/v1/models/{}/predict"


def _tensor(rows, **extra) -> bytes:
    return json.dumps({"inputs": [{"name": "input", "shape": [len(rows), len(rows[0])], "datatype": "FP32",
                                   "data": rows}], **extra}).encode()


def _binary_in() -> tuple[bytes, dict]:
    inp = triton.InferInput("input", [2, 4], "FP32")
    inp.set_data_from_numpy(np.array([ROW, list(OTHER.values())], dtype=np.float32), binary_data=True)
    body, json_size = triton.InferenceServerClient.generate_request_body([inp], request_id="bin-1")
    return body, {"Inference-Header-Content-Length": str(json_size)}


def _requests() -> dict[str, tuple[str, bytes, dict, int]]:
    """name → (path, body, extra headers, instances): both APIs, single and batch, both cache tiers,
    V2's own id and its binary data extension. (The regressor's cache is off: never remembered,
    test_predict.py shows it is never answered as cached.)"""
    binary_body, binary_headers = _binary_in()
    return {
        "v1 single": (PREDICT.format("iris"), json.dumps(IRIS).encode(), {}, 1),
        "v1 batch, other version": (PREDICT.format("iris") + "?version=2",
                                    json.dumps({"instances": [IRIS, OTHER]}).encode(), {}, 2),
        "v2 json": ("/v2/models/iris/infer", _tensor([ROW]), {}, 1),
        "v2 with its own id": ("/v2/models/iris/versions/2/infer", _tensor([ROW, list(OTHER.values())], id="req-7"), {}, 2),
        "v2 binary in, binary out": ("/v2/models/iris/infer", binary_body, binary_headers, 2),
        "v2 json in, one output binary": (
            "/v2/models/iris/infer",
            _tensor([ROW], outputs=[{"name": "label", "parameters": {"binary_data": True}}, {"name": "probabilities"}]),
            {}, 1),
    }


REQUESTS = _requests()


async def _post(client, path: str, body: bytes, headers: dict, rid: str):
    content_type = "application/octet-stream" if "Inference-Header-Content-Length" in headers else "application/json"
    resp = await client.post(path, data=body, headers={**AUTH, "Content-Type": content_type, "X-Request-ID": rid,
                                                       **headers})
    raw = await resp.read()
    assert resp.status == 200, raw
    kept = ("Content-Type", "Content-Length", "X-Request-ID", "Inference-Header-Content-Length")
    return raw, {k: resp.headers.get(k) for k in kept}


def _remembered(app, body: bytes, headers: dict) -> bool:
    header = headers.get("Inference-Header-Content-Length")
    return any(key[-2:] == (header, body) for key in app[STATE].repeats._entries)


async def _rows(dsn: str, rid: str, n: int) -> list[tuple]:
    for _ in range(300):
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            cur.execute("SELECT instance, model, model_version, input, output, cache_hit FROM predictions "
                        "WHERE request_id = %s ORDER BY input::text", (rid,))
            rows = cur.fetchall()
        if len(rows) >= n:
            return rows
        await asyncio.sleep(0.05)
    return rows


@pytest.mark.parametrize("name", list(REQUESTS))
async def test_a_repeat_is_answered_byte_for_byte_as_the_slow_path_answers_it(aiohttp_client, make_settings,
                                                                              fresh_db, name):
    path, body, headers, n = REQUESTS[name]
    apply_migrations(fresh_db)
    app = create_app(make_settings(timescale_url=fresh_db, db_logging="true", db_flush_interval_seconds=0.05))
    client = await aiohttp_client(app)

    await _post(client, path, body, headers, str(uuid.uuid4()))  # computed by the model
    await _post(client, path, body, headers, str(uuid.uuid4()))  # every instance cached: remembered
    assert _remembered(app, body, headers), "a request answered wholly from the cache is remembered"

    fast_rid, slow_rid = str(uuid.uuid4()), str(uuid.uuid4())
    fast, fast_headers = await _post(client, path, body, headers, fast_rid)
    app[STATE].repeats._entries.clear()  # the slow path again, same cache state
    slow, slow_headers = await _post(client, path, body, headers, slow_rid)

    assert fast == slow.replace(slow_rid.encode(), fast_rid.encode())
    assert fast_headers == {**slow_headers, "X-Request-ID": fast_rid}
    fast_rows, slow_rows = await _rows(fresh_db, fast_rid, n), await _rows(fresh_db, slow_rid, n)
    assert fast_rows == slow_rows and all(row[-1] is True for row in fast_rows)


async def test_repeats_count_in_the_metrics_and_are_authenticated(client):
    path, body, _, _ = REQUESTS["v1 single"]
    metrics = "/metrics"
    route = "/api/v1/models/{name}/predict"

    async def counts():
        text = await (await client.get(metrics)).text()
        return (sample(text, "prediction_service_requests_total", endpoint=route, method="POST", status="200", api="v1"),
                sample(text, "prediction_service_requests_total", endpoint=route, method="POST", status="401", api="v1"),
                sample(text, "prediction_service_cache_hits_total", model="iris", tier="local"),
                sample(text, "prediction_service_request_duration_seconds_count", endpoint=route, method="POST",
                       api="v1"))

    for _ in range(2):
        await client.post(path, data=body, headers={**AUTH, "Content-Type": "application/json"})
    before = await counts()
    for _ in range(5):
        resp = await client.post(path, data=body, headers={**AUTH, "Content-Type": "application/json"})
        assert (await resp.json())["cached"] is True
    resp = await client.post(path, data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 401 and (await resp.json())["error"]["code"]
    after = await counts()
    assert [a - b for a, b in zip(after, before)] == [5, 1, 5, 6]


async def test_a_repeat_is_not_served_once_its_result_left_the_cache(aiohttp_client, make_settings):
    app = create_app(make_settings(local_cache_size=2, cache_ttl_seconds=1))
    client = await aiohttp_client(app)
    path, body, _, _ = REQUESTS["v1 single"]

    async def cached() -> bool:
        resp = await client.post(path, data=body, headers={**AUTH, "Content-Type": "application/json"})
        return (await resp.json())["cached"]

    assert [await cached() for _ in range(3)] == [False, True, True]
    await asyncio.sleep(1.2)  # TTL: the slow path would compute it again, so must the repeat
    assert [await cached() for _ in range(3)] == [False, True, True]
    for value in (7.0, 7.5):  # two other instances push it out of the 2-entry cache
        await client.post(path, json=dict(IRIS, petal_width=value), headers=AUTH)
    assert await cached() is False


async def test_another_model_object_does_not_get_the_old_answer(client):
    app = client.server.app
    state = app[STATE]
    path, body, _, _ = REQUESTS["v1 single"]
    for _ in range(2):
        await client.post(path, data=body, headers={**AUTH, "Content-Type": "application/json"})
    model = state.registry.get("iris", None)
    assert state.repeats.get("v1", model, body) is not None
    reloaded = dataclasses.replace(model)  # what loading the same files again gives: an equal, new object
    assert state.repeats.get("v1", reloaded, body) is None
