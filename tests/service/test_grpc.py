"""The Open Inference Protocol over gRPC, driven by the official client (tritonclient.grpc): the same
answers, cache, auth, limits, log rows and metrics as /v2 over REST; every bad input a gRPC status
with a message (INVALID_ARGUMENT, NOT_FOUND, UNAUTHENTICATED, RESOURCE_EXHAUSTED…), never UNKNOWN.

The app runs in-process on real Redis and PostgreSQL, its gRPC listener on a free port in the same
event loop; the client is tritonclient's asyncio one. Requests the client would not build (contents
instead of raw bytes, broken tensors) are built from tritonclient's own generated messages.
"""
from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
import uuid

import grpc
import jwt
import numpy as np
import psycopg2
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from harness.net import free_port, wait_for_port
from metrics_text import sample
from service_support import API_KEY, AUTH, IRIS, JWT_SECRET, SERVICE_DIR, ServiceProcess, service_env
from prediction_service.app import create_app
from prediction_service.oip_grpc import messages, server as grpc_server
from prediction_service.state import STATE
from prediction_service.storage import apply_migrations

FEATURES = list(IRIS)
ROW = [IRIS[f] for f in FEATURES]
KEY = {"x-api-key": API_KEY}  # gRPC metadata keys are lower-case
INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"


class Service:
    """The app under test: its REST client, its gRPC port, tritonclient and a raw stub on it."""

    def __init__(self, app, http, port: int):
        self.app, self.http, self.port = app, http, port
        self.triton = triton_aio.InferenceServerClient(f"127.0.0.1:{port}")
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)

    async def close(self):
        await self.triton.close()
        await self.channel.close()

    async def infer_raw(self, request, metadata=KEY):
        """ModelInfer with a hand-built request; returns (response, trailing metadata)."""
        call = self.stub.ModelInfer(request, metadata=tuple(metadata.items()))
        response = await call
        return response, dict(await call.trailing_metadata())


@pytest.fixture
async def start(aiohttp_client, make_settings):
    """start(**settings) -> Service: the app with its gRPC listener on a free port."""
    started = []

    async def start_service(**overrides) -> Service:
        port = free_port()
        app = create_app(make_settings(grpc_port=port, **overrides))
        service = Service(app, await aiohttp_client(app), port)
        started.append(service)
        return service

    yield start_service
    for service in started:
        await service.close()


@pytest.fixture
async def svc(start) -> Service:
    return await start()


def inputs(x: np.ndarray) -> list:
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)  # raw_input_contents, tritonclient's way
    return [tensor]


def instances(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform([4.3, 2.0, 1.0, 0.1], [7.9, 4.4, 6.9, 2.5], (n, 4)).astype(np.float32)


async def rest_v2(svc: Service, x: np.ndarray, version: str = "") -> dict:
    path = f"/v2/models/iris{f'/versions/{version}' if version else ''}/infer"
    resp = await svc.http.post(path, headers=AUTH, json={"inputs": [
        {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}]})
    assert resp.status == 200, await resp.text()
    return await resp.json()


def matrix_request(rows, name="input", datatype="FP32", model="iris", **fields) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model, **fields)
    request.inputs.add(name=name, datatype=datatype, shape=[len(rows), len(rows[0])])
    request.raw_input_contents.append(np.asarray(rows, "<f4" if datatype == "FP32" else "<f8").tobytes())
    return request


def contents_request(rows, datatype="FP64") -> service_pb2.ModelInferRequest:
    """One [N] tensor per feature, values in contents (no raw bytes)."""
    request = service_pb2.ModelInferRequest(model_name="iris")
    for i, name in enumerate(FEATURES):
        tensor = request.inputs.add(name=name, datatype=datatype, shape=[len(rows)])
        getattr(tensor.contents, "fp64_contents" if datatype == "FP64" else "fp32_contents").extend(r[i] for r in rows)
    return request


# --- the protocol ----------------------------------------------------------------------------------

def test_protoset_is_compiled_from_the_vendored_proto(tmp_path, repo_root):
    """The committed descriptor is what `make grpc-protoset` makes of the .proto now."""
    out = tmp_path / "fresh.protoset"
    proc = subprocess.run(["make", "--no-print-directory", "grpc-protoset", f"GRPC_PROTOSET={out}"], cwd=repo_root,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert out.read_bytes() == messages.PROTOSET.read_bytes(), "run `make grpc-protoset` and commit the result"
    # Every RPC of the protocol has a handler (the service refuses to start otherwise).
    assert {m.name for m in messages.SERVICE.methods} == set(grpc_server.RPCS) == {
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer"}


# --- answers -----------------------------------------------------------------------------------------

async def test_health_and_metadata_equal_rest(svc):
    t = svc.triton
    assert await t.is_server_live() and await t.is_server_ready()  # open, like /v2/health/*
    assert await t.is_model_ready("iris") and await t.is_model_ready("iris", "2")
    assert not await t.is_model_ready("nope") and not await t.is_model_ready("iris", "9")
    server = await t.get_server_metadata(headers=KEY, as_json=True)
    assert server == await (await svc.http.get("/v2", headers=AUTH)).json()
    for name, version in (("iris", ""), ("iris", "2"), ("diabetes", "1")):
        meta = await t.get_model_metadata(name, version, headers=KEY, as_json=True)
        path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "")
        rest = await (await svc.http.get(path, headers=AUTH)).json()
        # protobuf's JSON writes int64 as strings
        for tensor in meta["inputs"] + meta["outputs"]:
            tensor["shape"] = [int(d) for d in tensor["shape"]]
        assert meta == rest


async def test_not_ready_without_models(start, tmp_path):
    svc = await start(model_path=tmp_path)
    assert await svc.triton.is_server_live() and not await svc.triton.is_server_ready()


@pytest.mark.parametrize("n", [1, 1000])
@pytest.mark.parametrize("version", ["", "2"])
async def test_infer_equals_rest(svc, n, version):
    x = instances(n, seed=n + len(version))
    result = await svc.triton.infer("iris", inputs(x), model_version=version, headers=KEY)
    expected = await rest_v2(svc, x, version)
    response = result.get_response()
    assert (response.model_name, response.model_version) == ("iris", expected["model_version"])
    label, proba = expected["outputs"]
    assert result.as_numpy("label").astype(str).tolist() == label["data"]
    assert result.as_numpy("probabilities").shape == (n, 3)
    assert result.as_numpy("probabilities").ravel().tolist() == np.asarray(proba["data"], np.float32).tolist()
    # One cache for every protocol: REST's request, made after, found every instance gRPC computed.
    assert response.parameters["cache_hits"].int64_param == 0 and expected["parameters"]["cache_hits"] == n
    again = await svc.triton.infer("iris", inputs(x), model_version=version, headers=KEY)
    assert again.get_response().parameters["cache_hits"].int64_param == n


async def test_contents_form_requested_outputs_and_ids(svc):
    rows = instances(3, seed=7).astype(np.float64).tolist()
    request = contents_request(rows)
    request.id = "grpc-json"
    request.outputs.add(name="label")
    response, trailers = await svc.infer_raw(request)
    assert response.id == "grpc-json" and [o.name for o in response.outputs] == ["label"]
    labels = triton.InferResult(response).as_numpy("label").astype(str).tolist()
    assert labels == (await rest_v2(svc, np.asarray(rows, np.float32)))["outputs"][0]["data"]
    # Without an id the response carries the request id, which the trailing metadata also names.
    response, trailers = await svc.infer_raw(contents_request(rows, datatype="FP32"))
    assert response.id == trailers["x-request-id"] and len(response.id) == 32
    supplied = str(uuid.uuid4())
    response, trailers = await svc.infer_raw(contents_request(rows), {**KEY, "x-request-id": supplied})
    assert response.id == trailers["x-request-id"] == supplied
    response, trailers = await svc.infer_raw(contents_request(rows), {**KEY, "x-request-id": "not-a-uuid"})
    assert trailers["x-request-id"] != "not-a-uuid"


async def test_regressor_equals_rest(svc):
    meta = await svc.triton.get_model_metadata("diabetes", headers=KEY, as_json=True)
    x = np.asarray([[0.02 * (i + 1) for i in range(len(meta["inputs"]))]], np.float32)
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = await svc.triton.infer("diabetes", [tensor], headers=KEY)
    rest = await (await svc.http.post("/v2/models/diabetes/infer", headers=AUTH, json={"inputs": [
        {"name": "input", "shape": [1, x.shape[1]], "datatype": "FP32", "data": x.tolist()}]})).json()
    assert result.as_numpy("prediction").tolist() == np.asarray(rest["outputs"][0]["data"], np.float32).tolist()


# --- errors --------------------------------------------------------------------------------------------

def token(exp_in: int = 300, secret: str = JWT_SECRET) -> str:
    return jwt.encode({"sub": "tester", "exp": int(time.time()) + exp_in}, secret, algorithm="HS256")


def _raw(rows, **tensor_fields):
    request = service_pb2.ModelInferRequest(model_name="iris")
    request.inputs.add(**{"name": "input", "datatype": "FP32", "shape": [len(rows), 4], **tensor_fields})
    request.raw_input_contents.append(np.asarray(rows, "<f4").tobytes())
    return request


def _both_forms():
    request = _raw([ROW])
    request.inputs[0].contents.fp32_contents.extend(ROW)
    return request


def _wrong_contents_field():
    request = contents_request([ROW], datatype="FP32")
    request.inputs[0].contents.ClearField("fp32_contents")
    request.inputs[0].contents.fp64_contents.extend([ROW[0]])
    return request


def _raw_count_mismatch():
    request = _raw([ROW])
    request.raw_input_contents.append(b"\0" * 16)
    return request


BAD = [
    # id, request (made at test time), metadata, status, message fragment
    ("unknown model", lambda: matrix_request([ROW], model="nope"), KEY, "NOT_FOUND", "no model named 'nope'"),
    ("unknown version", lambda: matrix_request([ROW], model_version="9"), KEY, "NOT_FOUND", "has no version '9'"),
    ("no model name", lambda: matrix_request([ROW], model=""), KEY, "NOT_FOUND", "served models: diabetes, iris"),
    ("missing credentials", lambda: matrix_request([ROW]), {}, "UNAUTHENTICATED", "missing credentials"),
    ("wrong api key", lambda: matrix_request([ROW]), {"x-api-key": API_KEY[:-1] + "x"}, "UNAUTHENTICATED",
     "invalid API key"),
    ("expired jwt", lambda: matrix_request([ROW]), {"authorization": f"Bearer {token(-3600)}"}, "UNAUTHENTICATED",
     "token expired"),
    ("basic scheme", lambda: matrix_request([ROW]), {"authorization": "Basic dXNlcjpwdw=="}, "UNAUTHENTICATED",
     "Bearer <JWT>"),
    ("no inputs", lambda: service_pb2.ModelInferRequest(model_name="iris"), KEY, "INVALID_ARGUMENT",
     "inputs must be a non-empty list"),
    ("outside the declared range", lambda: matrix_request([[150, 3.5, 1.4, 0.2]]), KEY, "INVALID_ARGUMENT",
     "between 0 and 100"),
    ("NaN", lambda: matrix_request([[float("nan"), 3.5, 1.4, 0.2]]), KEY, "INVALID_ARGUMENT", "float32 range"),
    ("too many columns", lambda: _raw([ROW + [1.0]], shape=[1, 5]), KEY, "INVALID_ARGUMENT", "takes 4 features"),
    ("wrong matrix name", lambda: matrix_request([ROW], name="x"), KEY, "INVALID_ARGUMENT", "is named 'input'"),
    ("negative dimension", lambda: _raw([ROW], shape=[-1, 4]), KEY, "INVALID_ARGUMENT", "non-negative integers"),
    ("INT32 datatype", lambda: _raw([ROW], datatype="INT32"), KEY, "INVALID_ARGUMENT",
     "datatype must be FP32 or FP64, got INT32"),
    ("raw size disagrees with shape", lambda: _raw([ROW], shape=[2, 4]), KEY, "INVALID_ARGUMENT",
     "raw_input_contents[0] has 16 bytes; shape [2, 4] of FP32 values needs 32"),
    ("raw entries disagree with inputs", _raw_count_mismatch, KEY, "INVALID_ARGUMENT",
     "raw_input_contents has 2 entries for 1 inputs"),
    ("raw and contents both", _both_forms, KEY, "INVALID_ARGUMENT", "not both"),
    ("values in another type's field", _wrong_contents_field, KEY, "INVALID_ARGUMENT",
     "FP32 values go in contents.fp32_contents, got fp64_contents"),
    ("missing feature input", lambda: _drop_last_input(contents_request([ROW])), KEY, "INVALID_ARGUMENT",
     "missing input(s) 'petal_width'"),
    ("empty batch", lambda: _raw([], shape=[0, 4]), KEY, "INVALID_ARGUMENT", "batch is empty"),
    ("batch over the limit", lambda: matrix_request([ROW] * 1001), KEY, "INVALID_ARGUMENT", "limit is 1000"),
    ("unknown output", lambda: _with_outputs(matrix_request([ROW]), "logits"), KEY, "INVALID_ARGUMENT",
     "unknown output 'logits'"),
    ("output requested twice", lambda: _with_outputs(matrix_request([ROW]), "label", "label"), KEY,
     "INVALID_ARGUMENT", "requested twice"),
    ("message over the body limit", lambda: matrix_request([ROW] * 70000), KEY, "RESOURCE_EXHAUSTED",
     "larger than max"),
]


def _drop_last_input(request):
    del request.inputs[-1]
    return request


def _with_outputs(request, *names):
    for name in names:
        request.outputs.add(name=name)
    return request


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
async def test_bad_input_is_a_grpc_status_with_a_message(svc, case):
    _, make, metadata, status, fragment = case
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await svc.infer_raw(make(), metadata)
    assert err.value.code().name == status, err.value
    assert fragment in err.value.details(), err.value.details()


async def test_bytes_that_are_no_message_are_invalid_argument(svc):
    call = svc.channel.unary_unary(INFER_METHOD)  # no serializer: the bytes go as they are
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(b"\xff\xff\xff", metadata=tuple(KEY.items()))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "the request is not a valid inference.ModelInferRequest message"


async def test_metadata_rpcs_need_credentials_and_name_what_is_missing(svc):
    t = svc.triton
    for call in (lambda: t.get_server_metadata(), lambda: t.get_model_metadata("iris")):
        with pytest.raises(InferenceServerException) as err:
            await call()
        assert err.value.status() == "StatusCode.UNAUTHENTICATED" and "missing credentials" in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        await t.get_model_metadata("nope", headers=KEY)
    assert err.value.status() == "StatusCode.NOT_FOUND" and "no model named 'nope'" in err.value.message()
    # A JWT works as the API key does.
    meta = await t.get_model_metadata("iris", headers={"authorization": f"Bearer {token()}"}, as_json=True)
    assert meta["name"] == "iris"


async def test_unexpected_failure_is_internal_and_logged(start, monkeypatch, caplog):
    async def broken(state, request, call):
        raise RuntimeError("a bug")

    monkeypatch.setitem(grpc_server.RPCS, "ServerMetadata", (broken, True))
    svc = await start()
    with pytest.raises(InferenceServerException) as err:
        await svc.triton.get_server_metadata(headers=KEY)
    assert err.value.status() == "StatusCode.INTERNAL" and "the failure has been logged" in err.value.message()
    assert "a bug" not in err.value.message()
    assert any("unhandled error in /inference.GRPCInferenceService/ServerMetadata" in r.message for r in caplog.records)


# --- limits, shared with REST -----------------------------------------------------------------------------

async def test_in_flight_limit_is_shared_with_rest_and_answers_resource_exhausted(start):
    svc = await start(max_in_flight=2, request_timeout_seconds=60)
    # Two REST requests held in flight: headers sent, body not finished.
    body = b'{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}'
    held = []
    for _ in range(2):
        reader, writer = await asyncio.open_connection("127.0.0.1", svc.http.server.port)
        writer.write((f"POST /api/v1/models/iris/predict HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\n"
                      f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body[:10])
        await writer.drain()
        held.append((reader, writer))
    for _ in range(400):
        if svc.app[STATE].in_flight == 2:
            break
        await asyncio.sleep(0.01)
    metrics = await (await svc.http.get("/metrics")).text()
    assert sample(metrics, "prediction_service_requests_in_progress") == 2
    with pytest.raises(InferenceServerException) as err:
        await svc.triton.infer("iris", inputs(instances(1, 1)), headers=KEY)
    assert err.value.status() == "StatusCode.RESOURCE_EXHAUSTED" and "limit 2" in err.value.message()
    assert await svc.triton.is_server_live()  # the health RPCs are never limited
    for reader, writer in held:
        writer.write(body[10:])
        await writer.drain()
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        writer.close()
    for _ in range(400):
        if svc.app[STATE].in_flight == 0:
            break
        await asyncio.sleep(0.01)
    assert (await svc.triton.infer("iris", inputs(instances(1, 1)), headers=KEY)).as_numpy("label").shape == (1,)


async def test_slow_call_times_out_with_deadline_exceeded_and_releases_its_slot(start, monkeypatch):
    async def slow(state, request, call):
        await asyncio.sleep(30)

    monkeypatch.setitem(grpc_server.RPCS, "ModelMetadata", (slow, True))
    svc = await start(request_timeout_seconds=0.2)
    started = time.monotonic()
    with pytest.raises(InferenceServerException) as err:
        await svc.triton.get_model_metadata("iris", headers=KEY)
    assert time.monotonic() - started < 5
    assert err.value.status() == "StatusCode.DEADLINE_EXCEEDED" and "longer than 0.2s" in err.value.message()
    assert svc.app[STATE].in_flight == 0
    metrics = await (await svc.http.get("/metrics")).text()
    assert sample(metrics, "prediction_service_requests_rejected_total", reason="timeout") >= 1


# --- metrics and log rows ------------------------------------------------------------------------------

async def test_metrics_carry_api_grpc(svc):
    def counts(text):  # the process's metrics outlive each test's app: compare before and after
        return {(endpoint, status): sample(text, "prediction_service_requests_total", endpoint=endpoint,
                                           method="POST", status=status, api="grpc")
                for endpoint in (INFER_METHOD, "/inference.GRPCInferenceService/ServerLive")
                for status in ("OK", "NOT_FOUND")} | {
            "seconds": sample(text, "prediction_service_request_duration_seconds_count", endpoint=INFER_METHOD,
                              api="grpc"),
            "misses": sample(text, "prediction_service_cache_misses_total", model="iris")}

    before = counts(await (await svc.http.get("/metrics")).text())
    await svc.triton.is_server_live()
    await svc.triton.infer("iris", inputs(instances(2, 3)), headers=KEY)
    with pytest.raises(InferenceServerException):
        await svc.triton.infer("nope", inputs(instances(1, 3)), headers=KEY)
    text = await (await svc.http.get("/metrics")).text()
    after = counts(text)
    assert {k: after[k] - before[k] for k in after} == {
        (INFER_METHOD, "OK"): 1, (INFER_METHOD, "NOT_FOUND"): 1,
        ("/inference.GRPCInferenceService/ServerLive", "OK"): 1,
        ("/inference.GRPCInferenceService/ServerLive", "NOT_FOUND"): 0, "seconds": 2, "misses": 2}
    proc = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


async def test_log_rows_name_the_request(start, fresh_db):
    apply_migrations(fresh_db)
    svc = await start(timescale_url=fresh_db, db_logging="true", db_flush_interval_seconds=0.1)
    rid = str(uuid.uuid4())
    x = np.asarray([ROW, [6.7, 3.0, 5.8, 2.2]], np.float32)
    await svc.triton.infer("iris", inputs(x[:1]), headers=KEY)  # the first instance cached before
    result = await svc.triton.infer("iris", inputs(x), headers={**KEY, "x-request-id": rid})

    def rows():
        with psycopg2.connect(fresh_db) as conn, conn.cursor() as cur:
            cur.execute("SELECT model, model_version, instance, input, output, cache_hit FROM predictions "
                        "WHERE request_id = %s ORDER BY input->>'petal_width'", (rid,))
            return cur.fetchall()

    for _ in range(300):
        if len(rows()) == 2:
            break
        await asyncio.sleep(0.1)
    logged = rows()
    assert [r[:3] for r in logged] == [("iris", "1", "test")] * 2
    assert [r[3] for r in logged] == [dict(zip(FEATURES, map(float, row))) for row in x]
    assert [r[4]["label"] for r in logged] == result.as_numpy("label").astype(str).tolist()
    assert [r[5] for r in logged] == [True, False]


async def test_an_acknowledged_infer_has_its_row_committed_when_it_returns(start, fresh_db):
    """PREDICTION_DB_ACK_AFTER_WRITE holds gRPC answers as it holds HTTP ones (flushes are 300 s apart)."""
    apply_migrations(fresh_db)
    svc = await start(timescale_url=fresh_db, db_logging="true", db_flush_interval_seconds=300,
                      db_ack_after_write="true")
    rid = str(uuid.uuid4())
    await svc.triton.infer("iris", inputs(np.asarray([ROW], np.float32)), headers={**KEY, "x-request-id": rid})
    with psycopg2.connect(fresh_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM predictions WHERE request_id = %s", (rid,))
        assert cur.fetchone()[0] == 1


# --- the process ----------------------------------------------------------------------------------------

def test_process_serves_grpc_and_stops_on_sigterm(demo_models, redis_server, postgres):
    """``python -m prediction_service`` (uvloop, as deployed) answers gRPC next to REST."""
    port = free_port()
    svc = ServiceProcess(service_env(demo_models, redis_server.url, postgres.dsn(), grpc_port=port))
    try:
        wait_for_port(port, timeout=30)
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.is_server_ready()
        result = client.infer("iris", inputs(np.asarray([ROW], np.float32)), headers=KEY)
        assert result.as_numpy("label").astype(str).tolist() == ["setosa"]
        client.close()
        svc.proc.send_signal(signal.SIGTERM)
        assert svc.proc.wait(timeout=30) == 0
    finally:
        svc.stop()


def test_taken_grpc_port_stops_start_up_with_one_clear_line(demo_models):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**service_env(demo_models, "redis://127.0.0.1:1/0", "postgresql://u:pw@127.0.0.1:1/db",
                             grpc_port=port, db_logging="false"),
               "PREDICTION_HOST": "127.0.0.1", "PREDICTION_PORT": str(free_port()), "PYTHONPATH": str(SERVICE_DIR)}
        proc = subprocess.run([sys.executable, "-m", "prediction_service"], env=env, capture_output=True,
                              text=True, timeout=60, cwd=SERVICE_DIR)
    assert proc.returncode == 1, proc.stderr
    assert f"PREDICTION_GRPC_PORT: cannot listen on 127.0.0.1:{port}" in proc.stderr
    assert "Traceback" not in proc.stderr
