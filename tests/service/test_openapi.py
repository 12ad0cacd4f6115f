"""The OpenAPI document is true to the app, and schema-driven fuzzing never gets a 5xx."""
from __future__ import annotations

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings

from service_support import AUTH, ServiceProcess, service_env
from prediction_service.app import create_app


def app_routes(app) -> set[tuple[str, str]]:
    return {(r.resource.canonical, r.method.lower()) for r in app.router.routes() if r.method != "HEAD"}


def test_openapi_paths_are_exactly_the_routes(make_settings):
    from prediction_service.openapi import build_openapi
    from prediction_service.models import load_models

    s = make_settings()
    doc = build_openapi(load_models(s.model_path), s.max_batch, s.max_body_bytes)
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert documented == app_routes(create_app(s))


async def test_served_document_is_openapi_3(client):
    resp = await client.get("/api/openapi.json")
    doc = await resp.json()
    assert doc["openapi"].startswith("3.")
    assert set(doc["components"]["securitySchemes"]) == {"ApiKey", "BearerJWT"}
    # Probes are documented as public, the API as authenticated.
    assert doc["paths"]["/health"]["get"]["security"] == []
    assert "security" not in doc["paths"]["/api/v1/models/{name}/predict"]["post"]


@pytest.fixture(scope="module")
def running_service(demo_models, redis_server, postgres):
    proc = ServiceProcess(service_env(demo_models, redis_server.url, postgres.dsn()))
    yield proc
    proc.stop()


# schemathesis.pytest.from_fixture does not work with pytest 9 (it reads the removed
# ``Item._nodeid``), so the server's schema is loaded inside the test and its Hypothesis
# strategies are driven directly.
@pytest.mark.slow
@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE])
def test_fuzzed_requests_never_get_a_server_error(running_service, mode):
    schema = schemathesis.openapi.from_url(f"{running_service.url}/api/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    if mode == schemathesis.GenerationMode.NEGATIVE:
        # Only predict takes input; an input-less GET has no invalid variant to generate.
        operations = [op for op in operations if op.method == "post"]
    exercised: dict[str, int] = {}
    for operation in operations:
        label = f"{operation.method.upper()} {operation.path}"
        # Bodies and parameters only vary on predict; the GET endpoints take no input.
        examples = 150 if operation.method == "post" else 10

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            with_key = case.call(headers=AUTH, timeout=30)
            assert with_key.status_code < 500, f"{label}: {with_key.status_code} {with_key.text[:500]}"
            if with_key.status_code >= 400:
                error = with_key.json()["error"]
                assert error["code"] and error["message"]
            # The same case with the generator's own credentials (or none): still no 5xx, no traceback.
            as_generated = case.call(timeout=30)
            assert as_generated.status_code < 500, as_generated.text[:500]
            assert "Traceback" not in as_generated.text
            exercised[label] = exercised.get(label, 0) + 1

        check()
    # Every operation schemathesis takes from the document (it leaves out the document's own URL).
    assert set(exercised) == {f"{op.method.upper()} {op.path}" for op in operations}
    assert exercised["POST /api/v1/models/{name}/predict"] >= 50


@pytest.mark.slow
def test_fuzzing_also_reached_success(running_service):
    """Guards the fuzz test against passing vacuously: the documented examples predict for real."""
    doc = requests.get(f"{running_service.url}/api/openapi.json", timeout=10).json()
    op = doc["paths"]["/api/v1/models/{name}/predict"]["post"]
    name = op["parameters"][0]["example"]
    for example in op["requestBody"]["content"]["application/json"]["examples"].values():
        resp = requests.post(f"{running_service.url}/api/v1/models/{name}/predict", json=example["value"],
                             headers=AUTH, timeout=10)
        assert resp.status_code == 200, resp.text
