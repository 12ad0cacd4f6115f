"""The Open Inference Protocol (KServe V2 REST) on /v2: the same answers, cache, auth, limits, log
rows and metrics as /api/v1, in the protocol's shapes; every bad V2 input a 4xx with its error body."""
from __future__ import annotations

import asyncio
import json
import struct

import numpy as np
import psycopg2
import pytest
import tritonclient.http as triton

from metrics_text import sample
from service_support import API_KEY, AUTH, IRIS, wait_in_flight
from prediction_service.app import create_app
from prediction_service.storage import apply_migrations

FEATURES = list(IRIS)
ROW = [IRIS[f] for f in FEATURES]
INFER = "/v2/models/iris/infer"
JSON = {**AUTH, "Content-Type": "application/json"}


def matrix(rows, name="input", datatype="FP32", **extra) -> dict:
    return {"inputs": [{"name": name, "shape": [len(rows), len(rows[0])], "datatype": datatype,
                        "data": [list(r) for r in rows]}], **extra}


def per_feature(rows, datatype="FP64") -> dict:
    return {"inputs": [{"name": f, "shape": [len(rows)], "datatype": datatype, "data": [r[i] for r in rows]}
                       for i, f in enumerate(FEATURES)]}


async def v1(client, rows, version=None):
    params = {"version": version} if version else None
    resp = await client.post("/api/v1/models/iris/predict", headers=AUTH, params=params,
                             json={"instances": [dict(zip(FEATURES, r)) for r in rows]})
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def test_health_and_metadata(client):
    assert await (await client.get("/v2/health/live")).json() == {"live": True}
    assert await (await client.get("/v2/health/ready")).json() == {"ready": True}
    server = await (await client.get("/v2", headers=AUTH)).json()
    assert server["extensions"] == ["binary_tensor_data"] and server["name"] and server["version"]
    meta = await (await client.get("/v2/models/iris", headers=AUTH)).json()
    assert meta["name"] == "iris" and meta["versions"] == ["1", "2"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": f, "datatype": "FP32", "shape": [-1]} for f in FEATURES]
    assert meta["outputs"] == [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                               {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}]
    diabetes = await (await client.get("/v2/models/diabetes/versions/1", headers=AUTH)).json()
    assert diabetes["outputs"] == [{"name": "prediction", "datatype": "FP32", "shape": [-1]}]
    for path in ("/v2/models/iris/ready", "/v2/models/iris/versions/2/ready"):
        assert await (await client.get(path)).json() == {"name": "iris", "ready": True}  # open, like /health


async def test_not_ready_without_models(aiohttp_client, make_settings, tmp_path):
    client = await aiohttp_client(create_app(make_settings(model_path=tmp_path)))
    resp = await client.get("/v2/health/ready")
    assert resp.status == 400 and await resp.json() == {"ready": False}  # the protocol: 4xx means false
    assert (await client.get("/v2/health/live")).status == 200


@pytest.mark.parametrize("version", [None, "2"])
async def test_infer_json_equals_v1(client, version):
    rows = [ROW, [6.7, 3.0, 5.8, 2.2], [5.9, 3.0, 4.2, 1.5]]
    path = INFER if version is None else f"/v2/models/iris/versions/{version}/infer"
    expected = await v1(client, rows, version)
    for body in (matrix(rows, id="req-7"), per_feature(rows)):
        resp = await client.post(path, json=body, headers=AUTH)
        assert resp.status == 200, await resp.text()
        out = await resp.json()
        assert out["model_name"] == "iris" and out["model_version"] == expected["version"]
        assert out["id"] == body.get("id", resp.headers["X-Request-ID"])
        label, proba = out["outputs"]
        assert label == {"name": "label", "datatype": "BYTES", "shape": [3], "data": expected["predictions"]}
        assert proba["shape"] == [3, 3] and proba["datatype"] == "FP32"
        assert proba["data"] == [p for probs in expected["probabilities"] for p in probs.values()]
        # Answered from the cache /api/v1 filled: one cache for both protocols.
        assert out["parameters"]["cache_hits"] == 3


async def test_nested_flat_and_column_shapes_agree(client):
    rows = [ROW, [6.0, 2.9, 4.5, 1.5]]
    flat = {"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP64", "data": ROW + rows[1]}]}
    columns = {"inputs": [{"name": f, "shape": [2, 1], "datatype": "FP32", "data": [[r[i]] for r in rows]}
                          for i, f in enumerate(FEATURES)]}
    answers = [await (await client.post(INFER, json=b, headers=AUTH)).json() for b in (matrix(rows), flat, columns)]
    assert answers[0]["outputs"] == answers[1]["outputs"] == answers[2]["outputs"]


async def test_requested_outputs_and_regressor(client):
    body = {**matrix([ROW]), "outputs": [{"name": "probabilities"}]}
    out = await (await client.post(INFER, json=body, headers=AUTH)).json()
    assert [o["name"] for o in out["outputs"]] == ["probabilities"]
    features = [f["name"] for f in (await (await client.get("/v2/models/diabetes", headers=AUTH)).json())["inputs"]]
    instance = {f: 0.02 * (i + 1) for i, f in enumerate(features)}
    expected = (await (await client.post("/api/v1/models/diabetes/predict", json=instance, headers=AUTH)).json())
    out = await (await client.post("/v2/models/diabetes/infer", headers=AUTH,
                                   json=matrix([list(instance.values())]))).json()
    assert out["outputs"] == [{"name": "prediction", "datatype": "FP32", "shape": [1],
                               "data": expected["predictions"]}]


async def test_binary_tensor_data_both_ways(client):
    """Triton's binary extension, built and read by tritonclient's own code (its default mode)."""
    x = np.array([ROW, [6.7, 3.0, 5.8, 2.2]], dtype=np.float32)
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    body, json_size = triton.InferenceServerClient.generate_request_body([inp], request_id="bin-1")
    resp = await client.post(INFER, data=body, headers={**AUTH, "Inference-Header-Content-Length": str(json_size)})
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"] == "application/octet-stream"
    result = triton.InferenceServerClient.parse_response_body(
        await resp.read(), header_length=int(resp.headers["Inference-Header-Content-Length"]))
    expected = await v1(client, x.tolist())
    assert result.get_response()["id"] == "bin-1"
    assert result.as_numpy("label").astype(str).tolist() == expected["predictions"]
    assert np.allclose(result.as_numpy("probabilities"),
                       [list(p.values()) for p in expected["probabilities"]], atol=1e-6)
    # JSON in, one binary output out, the other as JSON.
    body = {**matrix(x.tolist()), "outputs": [{"name": "label", "parameters": {"binary_data": True}},
                                               {"name": "probabilities"}]}
    resp = await client.post(INFER, json=body, headers=AUTH)
    raw = await resp.read()
    head_len = int(resp.headers["Inference-Header-Content-Length"])
    head = json.loads(raw[:head_len])
    assert head["outputs"][0]["parameters"]["binary_data_size"] == len(raw) - head_len
    n = struct.unpack("<I", raw[head_len:head_len + 4])[0]
    assert raw[head_len + 4:head_len + 4 + n].decode() == expected["predictions"][0]
    assert "data" in head["outputs"][1]


def _binary(values: list[float], header: dict | None = None, size: int | None = None) -> tuple[bytes, str]:
    blob = np.asarray(values, "<f4").tobytes()
    doc = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                       "parameters": {"binary_data_size": len(blob) if size is None else size}}], **(header or {})}
    head = json.dumps(doc).encode()
    return head + blob, str(len(head))


BAD = [
    # id, body (or (bytes, Inference-Header-Content-Length)), status, message fragment
    ("not json", b"{", 400, "not valid JSON"),
    ("not an object", [1], 400, "JSON object"),
    ("no inputs", {}, 400, "inputs must be a non-empty list"),
    ("empty inputs", {"inputs": []}, 400, "inputs must be a non-empty list"),
    ("unknown top-level key", {**matrix([ROW]), "model": "iris"}, 400, "unexpected key(s) 'model'"),
    ("id not a string", {**matrix([ROW]), "id": 7}, 400, "id must be a string"),
    ("parameters not an object", {**matrix([ROW]), "parameters": [1]}, 400, "parameters must be an object"),
    ("null parameters", {**matrix([ROW]), "parameters": None}, 400, "parameters must be an object"),
    ("null id", {**matrix([ROW]), "id": None}, 400, "id must be a string"),
    ("null outputs", {**matrix([ROW]), "outputs": None}, 400, "outputs must be a non-empty list"),
    ("parameter value a list", {**matrix([ROW]), "parameters": {"x": [1]}}, 400, "string, number or boolean"),
    ("input not an object", {"inputs": [5]}, 400, "input 0 must be an object"),
    ("input without name", {"inputs": [{"shape": [1, 4], "datatype": "FP32", "data": ROW}]}, 400, "name must be a string"),
    ("wrong datatype", matrix([ROW], datatype="INT64"), 400, "datatype must be FP32 or FP64, got INT64"),
    ("BYTES datatype", matrix([ROW], datatype="BYTES"), 400, "FP32 or FP64"),
    ("datatype an object", matrix([ROW], datatype={}), 400, "FP32 or FP64"),
    ("negative dimension", {"inputs": [{"name": "input", "shape": [-1, 4], "datatype": "FP32", "data": ROW}]}, 400,
     "non-negative integers"),
    ("shape and data disagree", {"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": ROW}]},
     400, "holds 8 values but data has 4"),
    ("too many columns", {"inputs": [{"name": "input", "shape": [1, 5], "datatype": "FP32", "data": ROW + [1]}]},
     400, "takes 4 features"),
    ("wrong matrix name", matrix([ROW], name="x"), 400, "is named 'input'"),
    ("unknown input name", {"inputs": [*per_feature([ROW])["inputs"][:3],
                                       {"name": "colour", "shape": [1], "datatype": "FP32", "data": [1]}]}, 400,
     "unknown input(s) 'colour'"),
    ("missing feature input", {"inputs": per_feature([ROW])["inputs"][:3]}, 400, "missing input(s) 'petal_width'"),
    ("duplicate input", {"inputs": per_feature([ROW])["inputs"] + per_feature([ROW])["inputs"][:1]}, 400,
     "duplicate input names"),
    ("feature inputs disagree on N", {"inputs": [*per_feature([ROW])["inputs"][:3],
                                                 {"name": "petal_width", "shape": [2], "datatype": "FP32",
                                                  "data": [1, 2]}]}, 400, "disagree on N"),
    ("string value", matrix([["5.1", 3.5, 1.4, 0.2]]), 400, "must be a number, got a string"),
    ("boolean value", matrix([[True, 3.5, 1.4, 0.2]]), 400, "must be a number, got a boolean"),
    ("null value", matrix([[None, 3.5, 1.4, 0.2]]), 400, "got null"),
    ("NaN literal", b'{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[NaN,1,1,1]}]}', 400,
     "NaN"),
    ("beyond float32", matrix([[1e39, 3.5, 1.4, 0.2]]), 400, "float32"),
    ("outside the declared range", matrix([[150, 3.5, 1.4, 0.2]]), 400, "between 0 and 100"),
    ("empty batch", {"inputs": [{"name": "input", "shape": [0, 4], "datatype": "FP32", "data": []}]}, 400,
     "batch is empty"),
    ("batch over the limit", matrix([ROW] * 1001), 400, "limit is 1000"),
    ("unknown output", {**matrix([ROW]), "outputs": [{"name": "logits"}]}, 400, "unknown output 'logits'"),
    ("output requested twice", {**matrix([ROW]), "outputs": [{"name": "label"}, {"name": "label"}]}, 400,
     "requested twice"),
    ("binary_data not a boolean", {**matrix([ROW]), "outputs": [{"name": "label", "parameters": {"binary_data": 1}}]},
     400, "binary_data must be true or false"),
    ("data and binary both", {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW,
                                          "parameters": {"binary_data_size": 16}}]}, 400, "not both"),
    ("binary size disagrees with shape", _binary(ROW, size=12), 400, "needs 16"),
    ("binary data cut short", (_binary(ROW)[0][:-4], _binary(ROW)[1]), 400, "binary data ends after 12"),
    ("binary bytes nobody claims", (_binary(ROW)[0] + b"\0" * 4, _binary(ROW)[1]), 400, "no input claims"),
    ("bad header length", (_binary(ROW)[0], "9999"), 400, "Inference-Header-Content-Length"),
    ("binary NaN", _binary([float("nan"), 1, 1, 1]), 400, "float32 range"),
]


def _request(body):
    if isinstance(body, tuple):
        return {"data": body[0], "headers": {**AUTH, "Inference-Header-Content-Length": body[1]}}
    if isinstance(body, bytes):
        return {"data": body, "headers": JSON}
    return {"data": json.dumps(body), "headers": JSON}


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
async def test_bad_v2_input_is_a_4xx_with_the_protocol_error(client, case):
    _, body, status, fragment = case
    resp = await client.post(INFER, **_request(body))
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    error = await resp.json()
    assert list(error) == ["error"] and isinstance(error["error"], str), error
    assert fragment in error["error"], error


COMMON_FORMS = [  # the request shapes parse_request answers by its shortcut (tensors._common_request)
    matrix([ROW]), matrix([ROW, [6.7, 3.0, 5.8, 2.2]], datatype="FP64"), {**matrix([ROW]), "id": "mine"},
    {"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": ROW + [6.7, 3.0, 5.8, 2.2]}]},
]
GENERAL_ONLY = [c[1] for c in BAD if isinstance(c[1], dict) and "parameters" not in c[1]]


@pytest.mark.parametrize("body", COMMON_FORMS + GENERAL_ONLY,
                         ids=[f"valid-{i}" for i in range(len(COMMON_FORMS))] + [c[0] for c in BAD
                                                                                  if isinstance(c[1], dict)
                                                                                  and "parameters" not in c[1]])
async def test_the_common_request_shape_answers_as_the_general_path_does(client, body):
    """The usual request shape takes a shortcut; the same request with "parameters": {} added (which only
    the general path accepts) gets the same outputs, or the same error, word for word."""
    answers = []
    for variant in (body, {**body, "parameters": {}}):
        resp = await client.post(INFER, data=json.dumps(variant), headers=JSON)
        doc = await resp.json()
        answers.append((resp.status, doc.get("error"), doc.get("outputs"), doc.get("model_version")))
        if resp.status == 200:
            assert doc["id"] == body.get("id", resp.headers["X-Request-ID"])
    assert answers[0] == answers[1]


@pytest.mark.parametrize("method,path,headers,status,fragment", [
    ("GET", "/v2/models/nope", AUTH, 404, "no model named 'nope'"),
    ("GET", "/v2/models/iris/versions/9/ready", {}, 404, "no version '9'"),
    ("POST", "/v2/models/nope/infer", JSON, 404, "served models: diabetes, iris"),
    ("POST", INFER, {}, 401, "missing credentials"),
    ("GET", "/v2", {"X-API-Key": "wrong"}, 401, "invalid API key"),
    ("GET", INFER, AUTH, 405, "use POST"),
    ("POST", INFER, {**AUTH, "Content-Type": "text/plain"}, 415, "application/octet-stream"),
    ("GET", "/v2/nothing", AUTH, 404, "no such endpoint"),
])
async def test_protocol_errors(client, method, path, headers, status, fragment):
    resp = await client.request(method, path, headers=headers, data=json.dumps(matrix([ROW])))
    assert resp.status == status, await resp.text()
    error = await resp.json()
    assert list(error) == ["error"] and fragment in error["error"], error
    if status == 401:
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    if status == 405:
        assert resp.headers["Allow"] == "POST"


async def test_body_over_the_limit_is_413(client):
    resp = await client.post(INFER, json=matrix([ROW] * 60000), headers=AUTH)
    assert resp.status == 413 and "limit" in (await resp.json())["error"]


async def test_overload_is_the_same_fast_503(aiohttp_client, make_settings):
    app = create_app(make_settings(max_in_flight=1, request_timeout_seconds=60))
    client = await aiohttp_client(app)
    body = json.dumps(matrix([ROW])).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    writer.write((f"POST {INFER} HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n").encode() + body[:10])
    await writer.drain()
    await wait_in_flight(app, 1)
    resp = await client.post(INFER, json=matrix([ROW]), headers=AUTH)
    assert resp.status == 503 and resp.headers["Retry-After"] == "1"
    assert "too many requests in flight" in (await resp.json())["error"]
    assert (await client.get("/v2/health/live")).status == 200  # probes are never limited
    writer.write(body[10:])
    await writer.drain()
    assert int((await reader.readline()).split()[1]) == 200
    writer.close()


async def test_metrics_tell_v1_from_v2(client):
    series = [("/api/v1/models/{name}/predict", "POST", "200", "v1"), ("/v2/models/{name}/infer", "POST", "200", "v2"),
              ("/v2/models/{name}/infer", "POST", "400", "v2"), ("/health", "GET", "200", "none")]

    async def counts():
        text = await (await client.get("/metrics")).text()
        return [sample(text, "prediction_service_requests_total", endpoint=e, method=m, status=s, api=a) or 0
                for e, m, s, a in series]

    before = await counts()
    await client.get("/health")
    await v1(client, [ROW])
    await client.post(INFER, json=matrix([ROW]), headers=AUTH)
    await client.post(INFER, json={"inputs": []}, headers=AUTH)
    assert [a - b for a, b in zip(await counts(), before)] == [1, 1, 1, 1]


async def test_v2_writes_the_same_log_rows(aiohttp_client, make_settings, fresh_db):
    apply_migrations(fresh_db)
    client = await aiohttp_client(create_app(make_settings(timescale_url=fresh_db, db_logging="true",
                                                           db_flush_interval_seconds=0.1)))
    other = [6.1, 2.8, 4.7, 1.2]
    resp = await client.post(INFER, json=matrix([ROW, other]), headers=AUTH)
    assert resp.status == 200
    rid = resp.headers["X-Request-ID"]
    await v1(client, [other])
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60  # the writer's flush: a liveness bound, not a speed check
    while True:
        with psycopg2.connect(fresh_db) as conn, conn.cursor() as cur:
            cur.execute("SELECT request_id, input, output, cache_hit FROM predictions ORDER BY time, input->>'petal_width'")
            rows = cur.fetchall()
        if len(rows) == 3 or loop.time() > deadline:
            break
        await asyncio.sleep(0.1)
    v2_rows = [r for r in rows if r[0] == rid]
    assert [r[1] for r in v2_rows] == [IRIS, dict(zip(FEATURES, other))]
    (v1_row,) = [r for r in rows if r[0] != rid]
    # The same instance logs the same input and output whichever protocol asked; the repeat is a cache hit.
    assert v1_row[1:3] == v2_rows[1][1:3] and v1_row[3] is True and v2_rows[1][3] is False
