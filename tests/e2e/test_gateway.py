"""Through the nginx TLS gateway of the local environment: predictions, auth, redirect, storage, metrics."""
import uuid

import pytest
import requests

from harness.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

IRIS = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def _iris(i: int) -> dict:
    """A distinct iris instance per i (cache misses, so every request reaches a model and a row)."""
    return {**IRIS, "sepal_length": round(4.0 + (i % 997) / 300, 4), "petal_width": round(0.1 + (i % 89) / 40, 4)}


def test_up_prints_url_and_ready_curl(localenv):
    out = localenv.up_output
    assert localenv.url in out
    assert f"X-API-Key: {localenv.api_key}" in out and "curl --cacert" in out, out[-1500:]


def test_predict_single_over_https(localenv):
    r = localenv.session().post(f"{localenv.url}/api/v1/models/iris/predict", json=IRIS, timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "iris" and body["predictions"] == ["setosa"], body


def test_predict_batch_over_https(localenv):
    batch = [_iris(i) for i in range(10)]
    r = localenv.session().post(f"{localenv.url}/api/v1/models/iris/predict", json={"instances": batch}, timeout=10)
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 10


def test_without_key_is_401(localenv):
    r = requests.post(f"{localenv.url}/api/v1/models/iris/predict", json=IRIS, verify=localenv.cacert, timeout=10)
    assert r.status_code == 401, r.text
    assert "error" in r.json()


def test_plain_http_redirects_to_https(localenv):
    r = requests.get(f"{localenv.state['LOCALENV_HTTP_URL']}/api/v1/models", allow_redirects=False, timeout=10)
    assert r.status_code == 301
    assert r.headers["Location"] == f"{localenv.url}/api/v1/models"


def test_metrics_not_exposed_through_gateway(localenv):
    assert requests.get(f"{localenv.url}/metrics", verify=localenv.cacert, timeout=10).status_code == 404


def test_rows_reach_postgresql(localenv):
    s = localenv.session()
    marker = 1000 + uuid.uuid4().int % 100000
    ids = []
    for i in range(5):
        r = s.post(f"{localenv.url}/api/v1/models/iris/predict", json=_iris(marker + i), timeout=10)
        assert r.status_code == 200, r.text
        ids.append(r.json()["request_id"])
    rows = wait_until(lambda: (found := localenv.sql("SELECT request_id, instance FROM predictions "
                                                     "WHERE request_id = ANY(%s)", (ids,)))
                      and len(found) == len(ids) and found, 20, "the prediction rows in PostgreSQL")
    assert {r[0] for r in rows} == set(ids)


def test_traffic_reaches_both_instances_in_prometheus(localenv):
    s = localenv.session()
    for i in range(40):
        assert s.post(f"{localenv.url}/api/v1/models/iris/predict", json=_iris(i), timeout=10).status_code == 200

    def per_instance():
        result = localenv.promql('sum by (instance) (prediction_service_requests_total'
                                 '{endpoint="/api/v1/models/{name}/predict"})')
        counts = {r["metric"]["instance"]: float(r["value"][1]) for r in result}
        return counts if len(counts) == 2 and all(v > 0 for v in counts.values()) else None

    counts = wait_until(per_instance, 30, "prediction_service_requests_total for both instances")
    assert set(counts) == {"local-1", "local-2"}, counts
