"""The OpenAPI document served through the TLS gateway: true to what the gateway serves, and a
schemathesis run with every check against the gateway URL finds nothing."""
import subprocess
import sys
from pathlib import Path

import pytest
import requests

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ST = Path(sys.executable).parent / "st"
ST_CONFIG = Path(__file__).resolve().parents[1] / "schemathesis.toml"


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


def test_schemathesis_run_with_all_checks_through_the_gateway_finds_nothing(localenv, tmp_path):
    """Examples, coverage (boundaries, undeclared methods, missing auth) and fuzzing, as a user runs it."""
    proc = subprocess.run([str(ST), "--config-file", str(ST_CONFIG), "run", f"{localenv.url}/api/openapi.json",
                           "--checks", "all", "--tls-verify", localenv.cacert, "-H", f"X-API-Key: {localenv.api_key}",
                           "--max-examples", "25", "--no-color"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-2000:]
    summary = proc.stdout.strip().splitlines()[-1]  # "=== No issues found in …" or "=== 1 warning in …"
    assert "failure" not in summary and "error" not in summary, proc.stdout[-3000:]
