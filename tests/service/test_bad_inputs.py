"""Every kind of bad request gets the right 4xx, a stable code and a message saying what is wrong."""
from __future__ import annotations

import json

import pytest

from service_support import AUTH, IRIS

URL = "/api/v1/models/iris/predict"
JSON = {**AUTH, "Content-Type": "application/json"}


def body(obj) -> bytes:
    return json.dumps(obj).encode()


def without(key):
    return {k: v for k, v in IRIS.items() if k != key}


CASES = [
    # id, url, headers, raw body, expected status, code, message fragment
    ("malformed json", URL, JSON, b'{"sepal_length": 5.1,', 400, "malformed_json", "not valid JSON"),
    ("empty body", URL, JSON, b"", 400, "malformed_json", "empty"),
    ("not utf-8", URL, JSON, b'{"a": "\xff"}', 400, "malformed_json", "UTF-8"),
    ("deeply nested", URL, JSON, b"[" * 100000 + b"]" * 100000, 400, "malformed_json", "nested too deeply"),
    ("wrong content type", URL, {**AUTH, "Content-Type": "text/plain"}, body(IRIS), 415,
     "unsupported_media_type", "application/json"),
    ("no content type", URL, AUTH, body(IRIS), 415, "unsupported_media_type", "application/json"),
    ("body is a list", URL, JSON, body([IRIS]), 422, "invalid_body", "JSON object"),
    ("body is a number", URL, JSON, b"42", 422, "invalid_body", "JSON object"),
    ("missing feature", URL, JSON, body(without("petal_width")), 422, "missing_feature", "'petal_width'"),
    ("extra feature", URL, JSON, body({**IRIS, "colour": 1.0}), 422, "unknown_feature", "'colour'"),
    ("string feature", URL, JSON, body({**IRIS, "sepal_length": "5.1"}), 422, "invalid_feature_type",
     "'sepal_length' must be a number, got a string"),
    ("null feature", URL, JSON, body({**IRIS, "sepal_width": None}), 422, "invalid_feature_type", "got null"),
    ("bool feature", URL, JSON, body({**IRIS, "sepal_width": True}), 422, "invalid_feature_type", "got a boolean"),
    ("list feature", URL, JSON, body({**IRIS, "sepal_width": [1]}), 422, "invalid_feature_type", "got an array"),
    ("NaN literal", URL, JSON, b'{"sepal_length": NaN, "sepal_width": 1, "petal_length": 1, "petal_width": 1}',
     422, "non_finite_number", "NaN"),
    ("Infinity literal", URL, JSON,
     b'{"sepal_length": -Infinity, "sepal_width": 1, "petal_length": 1, "petal_width": 1}',
     422, "non_finite_number", "Infinity"),
    ("overflow to inf", URL, JSON, b'{"sepal_length": 1e999, "sepal_width": 1, "petal_length": 1, "petal_width": 1}',
     422, "non_finite_number", "'sepal_length'"),
    ("beyond float32", URL, JSON, body({**IRIS, "petal_length": 1e39}), 422, "non_finite_number", "float32"),
    ("huge integer", URL, JSON, body({**IRIS, "petal_length": 10 ** 60}), 422, "non_finite_number", "float32"),
    ("beyond the declared range", URL, JSON, body({**IRIS, "petal_length": 100.5}), 422, "out_of_range",
     "'petal_length' must be between 0 and 100"),
    ("below the declared range", URL, JSON, body({**IRIS, "sepal_width": -1}), 422, "out_of_range", "got -1"),
    ("too many digits", URL, JSON, b'{"sepal_length": ' + b"9" * 5000 + b"}", 400, "malformed_json", "not valid JSON"),
    ("empty batch", URL, JSON, body({"instances": []}), 422, "empty_batch", "at least one"),
    ("oversized batch", URL, JSON, body({"instances": [IRIS] * 1001}), 422, "batch_too_large",
     "limit is 1000"),
    ("instances not a list", URL, JSON, body({"instances": IRIS}), 422, "invalid_body", "must be a list"),
    ("batch with extra key", URL, JSON, body({"instances": [IRIS], "x": 1}), 422, "invalid_body", "'x'"),
    ("bad instance in batch", URL, JSON, body({"instances": [IRIS, without("sepal_length")]}), 422,
     "missing_feature", "instance 1"),
    ("instance not an object", URL, JSON, body({"instances": [IRIS, 3]}), 422, "invalid_instance", "instance 1"),
    ("body over the limit", URL, JSON, body({"instances": [IRIS] * 20000}), 413, "body_too_large", "limit"),
    ("unknown model", "/api/v1/models/nope/predict", JSON, body(IRIS), 404, "model_not_found", "'nope'"),
    ("unknown version", URL + "?version=7", JSON, body(IRIS), 404, "version_not_found", "available: 1, 2"),
    ("unknown path", "/api/v1/nothing", JSON, body(IRIS), 404, "not_found", "no such endpoint"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
async def test_bad_input_is_a_clear_4xx(client, case):
    _, url, headers, raw, status, code, fragment = case
    resp = await client.post(url, data=raw, headers=headers)
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    error = (await resp.json())["error"]
    assert error["code"] == code
    assert fragment in error["message"]
    assert "Traceback" not in error["message"]


async def test_wrong_method_is_405_with_allow(client):
    resp = await client.get(URL, headers=AUTH)
    assert resp.status == 405
    assert resp.headers["Allow"] == "POST"
    assert (await resp.json())["error"]["code"] == "method_not_allowed"


async def test_body_limit_is_enforced_while_streaming(client):
    """A chunked body (no Content-Length) over the limit is cut off, not buffered whole."""
    async def chunks():
        yield b'{"instances": ['
        for _ in range(30000):
            yield body(IRIS) + b","
        yield body(IRIS) + b"]}"

    resp = await client.post(URL, data=chunks(), headers=JSON)
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "body_too_large"


async def test_no_finite_model_output_is_a_422_and_not_cached(aiohttp_client, make_settings, demo_models, tmp_path):
    """A model without a declared range, fed values its float32 arithmetic overflows on (NaN out)."""
    import shutil

    from prediction_service.app import create_app

    root = tmp_path / "models"
    shutil.copytree(demo_models / "iris" / "2", root / "wide" / "1")
    meta = json.loads((root / "wide" / "1" / "metadata.json").read_text())
    meta.update(name="wide", version="1", features=[{"name": f["name"]} for f in meta["features"]])
    (root / "wide" / "1" / "metadata.json").write_text(json.dumps(meta))
    client = await aiohttp_client(create_app(make_settings(model_path=root)))
    huge = {**IRIS, "petal_length": 3e38}
    for _ in range(2):  # the second time too: the first answer was not cached as a prediction
        resp = await client.post("/api/v1/models/wide/predict", json={"instances": [IRIS, huge]}, headers=AUTH)
        assert resp.status == 422, await resp.text()
        error = (await resp.json())["error"]
        assert error["code"] == "non_finite_output" and error["message"].startswith("instance 1:"), error
    assert (await client.post("/api/v1/models/wide/predict", json=IRIS, headers=AUTH)).status == 200
