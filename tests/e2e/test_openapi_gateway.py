"""The OpenAPI document served through the TLS gateway: true to what the gateway serves."""
import pytest
import requests

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_gateway_document_offers_only_what_the_gateway_serves(localenv):
    doc = requests.get(f"{localenv.url}/api/openapi.json", verify=localenv.cacert, timeout=10).json()
    assert "/metrics" not in doc["paths"]
    s = localenv.session()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            example = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("examples", {})
            body = next(iter(example.values()))["value"] if example else None
            r = s.request(method, f"{localenv.url}{path}", json=body, timeout=10)
            assert r.status_code == 200, f"{method.upper()} {path}: {r.status_code} {r.text[:300]}"
            assert str(r.status_code) in op["responses"]
    # Straight to an instance, the same service documents its /metrics too.
    direct = requests.get(f"{localenv.state['LOCALENV_SERVICE_URLS'].split()[0]}/api/openapi.json", timeout=10).json()
    assert set(direct["paths"]) - set(doc["paths"]) == {"/metrics"}
