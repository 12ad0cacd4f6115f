"""The OpenAPI document is true to the app: its paths are the routes, its request schemas accept
exactly what the service accepts, and schema-driven fuzzing with every schemathesis check finds nothing."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import requests
import schemathesis
import tritonclient.http as triton
from aiohttp.test_utils import make_mocked_request
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from service_support import AUTH, IRIS, ServiceProcess, service_env
from prediction_service.app import create_app
from prediction_service.models import load_models
from prediction_service.openapi import GATEWAY_STATUSES, build_openapi

ST = Path(sys.executable).parent / "st"
ST_CONFIG = Path(__file__).resolve().parents[1] / "schemathesis.toml"


def documented_operations(doc: dict) -> set[tuple[str, str]]:
    return {(path, method) for path, ops in doc["paths"].items() for method in ops}


@pytest.mark.parametrize("gateway", [False, True], ids=["direct", "gateway"])
async def test_every_documented_path_is_a_route_and_every_route_documented(make_settings, gateway):
    s = make_settings()
    registry = load_models(s.model_path)
    doc = build_openapi(registry, s.max_batch, s.max_body_bytes, gateway=gateway)
    app = create_app(s, registry)
    routes = {(r.resource.canonical, r.method.lower()) for r in app.router.routes() if r.method != "HEAD"}
    reached = set()
    for path, method in documented_operations(doc):
        match = await app.router.resolve(make_mocked_request(method.upper(), path, app=app))
        assert match.http_exception is None, f"{method.upper()} {path} is documented but no route serves it"
        reached.add((match.route.resource.canonical, method))
    # The gateway never proxies /metrics, so its document must not offer it; everything else is documented.
    expected = routes - {("/metrics", "get")} if gateway else routes
    assert reached == expected
    # One predict path per served model (its body schema is that model's features).
    assert {p for p, _ in documented_operations(doc) if p.endswith("/predict")} == \
        {f"/api/v1/models/{name}/predict" for name in registry.models}


async def test_gateway_gets_its_own_document(client):
    direct = await (await client.get("/api/openapi.json")).json()
    via_gateway = await (await client.get("/api/openapi.json", headers={"X-Forwarded-Proto": "https"})).json()
    assert "/metrics" in direct["paths"] and "/metrics" not in via_gateway["paths"]
    for path, ops in via_gateway["paths"].items():
        for method, op in ops.items():
            assert set(GATEWAY_STATUSES) <= set(op["responses"]), f"{method} {path}"
            for status in ("502", "504"):
                assert op["responses"][status]["headers"]["Retry-After"]["required"] is True
    for ops in direct["paths"].values():
        assert not {"414", "431", "502", "504"} & {s for op in ops.values() for s in op["responses"]}
    # Probes are documented as public, the API as authenticated.
    assert direct["openapi"].startswith("3.")
    assert set(direct["components"]["securitySchemes"]) == {"ApiKey", "BearerJWT"}
    assert direct["paths"]["/health"]["get"]["security"] == []
    assert "security" not in direct["paths"]["/api/v1/models/iris/predict"]["post"]


def _extreme(**change):
    return {**IRIS, **change}


# Bodies at and around every edge the request schema draws; the service is the judge of each.
BODIES = [
    IRIS, {k: int(v) for k, v in IRIS.items()}, _extreme(sepal_length=0), _extreme(petal_width=100),
    {"instances": [IRIS]}, {"instances": [IRIS] * 1000},
    {}, {"": 1.0}, {**IRIS, "colour": 1.0}, {k: v for k, v in IRIS.items() if k != "petal_width"},
    _extreme(sepal_length=-0.1), _extreme(petal_width=100.5), _extreme(sepal_width=1e39),
    _extreme(sepal_width="5"), _extreme(sepal_width=None), _extreme(sepal_width=True),
    {"instances": []}, {"instances": [IRIS] * 1001}, {"instances": [IRIS], "extra": 1},
    {"instances": IRIS}, {"instances": [IRIS, 3]}, [IRIS], 42,
]


async def test_request_schema_accepts_exactly_what_the_service_accepts(client):
    doc = await (await client.get("/api/openapi.json")).json()
    schema = doc["paths"]["/api/v1/models/iris/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    validator = jsonschema.Draft7Validator(schema)
    for body in BODIES:
        resp = await client.post("/api/v1/models/iris/predict", json=body, headers=AUTH)
        assert validator.is_valid(body) == (resp.status == 200), (json.dumps(body)[:200], resp.status, await resp.text())


ROW = list(IRIS.values())
BINARY = "application/octet-stream"
HEADER = "Inference-Header-Content-Length"


def _tritonclient_body(inputs: list, request_id: str = "bin-1") -> tuple[bytes, int]:
    """What tritonclient sends by default: the JSON request, then each binary input's bytes."""
    return triton.InferenceServerClient.generate_request_body(inputs, request_id=request_id)


def _binary_input(rows, name="input") -> triton.InferInput:
    x = np.asarray(rows, dtype=np.float32)
    inp = triton.InferInput(name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    return inp


def _json(doc) -> bytes:
    return json.dumps(doc).encode()


JSON_REQUEST = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}
BOTH = {"inputs": [{**JSON_REQUEST["inputs"][0], "parameters": {"binary_data_size": 16}}]}
SIZE_ONLY = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}]}
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010800000000")
# (Content-Type, body, Inference-Header-Content-Length): tritonclient's binary requests, the JSON forms,
# and what the document used to offer as "any bytes"; none of them hits the document's stated limits.
V2_BODIES = [
    (BINARY, *_tritonclient_body([_binary_input([ROW])])),
    (BINARY, *_tritonclient_body([_binary_input([ROW, ROW])])),
    (BINARY, *_tritonclient_body([_binary_input([[v] for v in ROW][i:i + 1], name) for i, name in enumerate(IRIS)])),
    (BINARY, _json(JSON_REQUEST), None), ("application/json", _json(JSON_REQUEST), None),
    (BINARY, PNG, None), (BINARY, PNG, 8), (BINARY, b"", None), (BINARY, _json(JSON_REQUEST) + PNG, None),
    (BINARY, _json(BOTH) + bytes(16), len(_json(BOTH))), ("application/json", _json(BOTH), None),
    ("application/json", _json(SIZE_ONLY), None), (BINARY, _json(SIZE_ONLY) + bytes(16), 0),
    ("application/json", _json({**JSON_REQUEST, "outputs": [{"name": "probabilities"}, {"name": "label"}]}), None),
    ("application/json", _json({**JSON_REQUEST, "outputs": [{"name": "label"},
                                                             {"name": "label", "parameters": {"binary_data": True}}]}), None),
]


def _document_admits(op: dict, content_type: str, body: bytes, header: int | None) -> bool:
    """As the document reads: the body's JSON part (its first Inference-Header-Content-Length bytes, a
    length within the body; else all of it) valid per the content type's schema."""
    if header is not None and not 0 < header <= len(body):
        return False
    try:
        request = json.loads(body if header is None else body[:header])
    except ValueError:
        return False
    return jsonschema.Draft7Validator(op["requestBody"]["content"][content_type]["schema"]).is_valid(request)


async def test_v2_request_forms_accept_exactly_what_the_service_accepts(client):
    """Both media types of infer, Triton's binary tensor data included: not "any bytes" but a JSON request
    first, then the binary inputs' bytes, its length in Inference-Header-Content-Length."""
    doc = await (await client.get("/api/openapi.json")).json()
    op = doc["paths"]["/v2/models/iris/infer"]["post"]
    binary = op["requestBody"]["content"][BINARY]["schema"]
    assert binary["type"] == "object" and HEADER in binary["description"]
    for content_type, body, header in V2_BODIES:
        headers = {**AUTH, "Content-Type": content_type, **({HEADER: str(header)} if header is not None else {})}
        resp = await client.post("/v2/models/iris/infer", data=body, headers=headers)
        assert _document_admits(op, content_type, body, header) == (resp.status == 200), \
            (content_type, body[:120], header, resp.status, await resp.text())
    # The stated limit (tests/schemathesis.toml): a binary input whose bytes are not there fits the JSON
    # part's schema; the service names what is missing.
    resp = await client.post("/v2/models/iris/infer", data=_json(SIZE_ONLY), headers={**AUTH, "Content-Type": BINARY})
    assert resp.status == 400 and "binary data ends after 0 of 16 bytes" in (await resp.json())["error"]


@pytest.fixture(scope="module")
def running_service(demo_models, redis_server, postgres):
    proc = ServiceProcess(service_env(demo_models, redis_server.url, postgres.dsn()))
    yield proc
    proc.stop()


# schemathesis.pytest.from_fixture does not work with pytest 9 (it reads the removed
# ``Item._nodeid``), so the server's schema is loaded inside the test and its Hypothesis
# strategies are driven directly, each response validated by every schemathesis check.
@pytest.mark.slow
@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE])
def test_fuzzed_requests_pass_every_check(running_service, mode):
    schema = schemathesis.openapi.from_url(f"{running_service.url}/api/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    if mode == schemathesis.GenerationMode.NEGATIVE:
        # Only predict takes input; an input-less GET has no invalid variant to generate.
        operations = [op for op in operations if op.method == "post"]
    exercised: dict[str, int] = {}
    for operation in operations:
        label = f"{operation.method.upper()} {operation.path}"
        # Bodies and parameters only vary on predict and infer; the GET endpoints take no input.
        examples = 60 if operation.method == "post" else 10
        # V2 infer: the schema cannot tie a shape to its data length, so valid-looking data may get
        # a 400 (tests/schemathesis.toml says the same to `st run`); anything else is still checked.
        infer = operation.path.endswith("/infer")

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            # Status documented, body and headers as documented, valid data accepted, invalid rejected…
            with_key = case.call_and_validate(headers=AUTH, timeout=30,
                                              excluded_checks=[positive_data_acceptance] if infer else None)
            if infer and mode == schemathesis.GenerationMode.POSITIVE:
                assert with_key.status_code in (200, 400), with_key.text[:500]
            if with_key.status_code >= 400:
                error = with_key.json()["error"]
                assert error if operation.path.startswith("/v2") else error["code"] and error["message"]
            # The same case with the generator's own credentials (or none): still no 5xx, no traceback.
            as_generated = case.call(timeout=30)
            assert as_generated.status_code < 500, as_generated.text[:500]
            assert "Traceback" not in as_generated.text
            exercised[label] = exercised.get(label, 0) + 1

        check()
    # Every operation schemathesis takes from the document (it leaves out the document's own URL).
    assert set(exercised) == {f"{op.method.upper()} {op.path}" for op in operations}
    assert all(exercised[f"POST /api/v1/models/{name}/predict"] >= 30 for name in ("iris", "diabetes"))
    assert all(exercised[f"POST /v2/models/{name}/infer"] >= 30 for name in ("iris", "diabetes"))


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["direct", "gateway"])
def test_schemathesis_run_with_all_checks_finds_nothing(running_service, variant, tmp_path):
    """The CLI as a user runs it: examples, coverage (boundaries, wrong methods, missing auth), fuzzing."""
    extra = ["-H", "X-Forwarded-Proto: https"] if variant == "gateway" else []
    proc = subprocess.run([str(ST), "--config-file", str(ST_CONFIG), "run", f"{running_service.url}/api/openapi.json",
                           "--checks", "all", "-H", f"X-API-Key: {AUTH['X-API-Key']}", *extra,
                           "--max-examples", "25", "--no-color"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    summary = proc.stdout.strip().splitlines()[-1]  # "=== No issues found in …" or "=== 1 warning in …"
    assert "failure" not in summary and "error" not in summary, proc.stdout[-3000:]


@pytest.mark.slow
def test_documented_examples_predict(running_service):
    """Guards the fuzz tests against passing vacuously: the documented examples predict for real."""
    doc = requests.get(f"{running_service.url}/api/openapi.json", timeout=10).json()
    predict_paths = [p for p in doc["paths"] if p.endswith("/predict")]
    assert predict_paths
    for path in predict_paths:
        op = doc["paths"][path]["post"]
        for example in op["requestBody"]["content"]["application/json"]["examples"].values():
            resp = requests.post(f"{running_service.url}{path}", json=example["value"], headers=AUTH, timeout=10)
            assert resp.status_code == 200, resp.text
