"""The Open Inference Protocol over gRPC with the official client (tritonclient[grpc]) against the local
environment: through the TLS gateway (HTTP/2 by ALPN on the HTTPS port) and straight to one instance's
gRPC port. Every RPC answers; the answers equal REST's; bad calls get gRPC statuses with messages;
the calls are in Prometheus with api="grpc" and their rows in PostgreSQL."""
import uuid

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from harness.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@pytest.fixture(params=["gateway", "direct"])
def client(request, localenv):
    if request.param == "gateway":
        c = triton.InferenceServerClient(localenv.url.removeprefix("https://"), ssl=True,
                                         root_certificates=localenv.cacert)
    else:
        c = triton.InferenceServerClient(localenv.state["LOCALENV_SERVICE_GRPC_ADDRESSES"].split()[0])
    yield c
    c.close()


def auth(localenv, **more) -> dict:
    return {"x-api-key": localenv.api_key, **more}


def instances(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform([4.3, 2.0, 1.0, 0.1], [7.9, 4.4, 6.9, 2.5], (n, 4)).astype(np.float32)


def tensor(x: np.ndarray) -> list:
    t = triton.InferInput("input", list(x.shape), "FP32")
    t.set_data_from_numpy(x)
    return [t]


def rest_v2(localenv, path: str, body: dict | None = None) -> dict:
    s = localenv.session()
    r = s.post(f"{localenv.url}{path}", json=body, timeout=30) if body else s.get(f"{localenv.url}{path}", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_every_rpc_answers(client, localenv):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("iris") and client.is_model_ready("iris", "2") and not client.is_model_ready("nope")
    assert client.get_server_metadata(headers=auth(localenv), as_json=True) == rest_v2(localenv, "/v2")
    meta = client.get_model_metadata("iris", headers=auth(localenv), as_json=True)
    assert [i["name"] for i in meta["inputs"]] == FEATURES and meta["versions"] == ["1", "2"]
    assert [o["name"] for o in meta["outputs"]] == ["label", "probabilities"]
    result = client.infer("iris", tensor(instances(2, 0)), headers=auth(localenv))
    assert result.as_numpy("label").shape == (2,)


@pytest.mark.parametrize("n", [1, 1000])
@pytest.mark.parametrize("version", ["", "2"])
def test_infer_equals_rest(client, localenv, n, version):
    x = instances(n, seed=100 + n + len(version))
    result = client.infer("iris", tensor(x), model_version=version, headers=auth(localenv))
    path = "/v2/models/iris" + (f"/versions/{version}" if version else "") + "/infer"
    expected = rest_v2(localenv, path, {"inputs": [{"name": "input", "shape": [n, 4], "datatype": "FP32",
                                                    "data": x.tolist()}]})
    assert result.get_response().model_version == expected["model_version"]
    label, proba = expected["outputs"]
    assert result.as_numpy("label").astype(str).tolist() == label["data"]
    assert result.as_numpy("probabilities").ravel().tolist() == np.asarray(proba["data"], np.float32).tolist()


def test_errors_are_grpc_statuses_with_messages(client, localenv):
    x = tensor(instances(1, 1))
    cases = [
        (lambda: client.infer("nope", x, headers=auth(localenv)), "NOT_FOUND", "no model named 'nope'"),
        (lambda: client.infer("iris", x, model_version="9", headers=auth(localenv)), "NOT_FOUND", "no version '9'"),
        (lambda: client.infer("iris", x), "UNAUTHENTICATED", "missing credentials"),
        (lambda: client.get_model_metadata("iris", headers={"x-api-key": "wrong"}), "UNAUTHENTICATED",
         "invalid API key"),
        (lambda: client.infer("iris", tensor(np.array([[500, 3, 1, 0.2]], np.float32)), headers=auth(localenv)),
         "INVALID_ARGUMENT", "between 0 and 100"),
        (lambda: client.infer("iris", tensor(instances(1001, 2)), headers=auth(localenv)), "INVALID_ARGUMENT",
         "the limit is 1000"),
        # Above the service's 1 MiB (and below the gateway's 2m): the instance's own limit.
        (lambda: client.infer("iris", tensor(np.zeros((70000, 4), np.float32)), headers=auth(localenv)),
         "RESOURCE_EXHAUSTED", "larger than max"),
    ]
    for call, status, fragment in cases:
        with pytest.raises(InferenceServerException) as err:
            call()
        assert (err.value.status(), fragment in err.value.message()) == (f"StatusCode.{status}", True), err.value


def test_gateway_limit_is_a_grpc_status(localenv):
    """Above both limits, whichever sees it first answers, and either way it is RESOURCE_EXHAUSTED.

    nginx passes a gRPC call's body on as it arrives and counts it against its 2m; the instance refuses the
    message as soon as its first frame declares 3.2 MB (its limit is 1 MiB). Which answer reaches the client
    first is a race (on a loaded machine, often the instance's): the gateway's own message is checked in
    tests/infra/test_shared_templates.py, against a replica that does not answer first."""
    c = triton.InferenceServerClient(localenv.url.removeprefix("https://"), ssl=True, root_certificates=localenv.cacert)
    with pytest.raises(InferenceServerException) as err:
        c.infer("iris", tensor(np.zeros((200000, 4), np.float32)), headers=auth(localenv))  # 3.2 MB
    message = err.value.message()
    assert err.value.status() == "StatusCode.RESOURCE_EXHAUSTED", err.value
    assert "gateway limit of 2m" in message or "larger than max (3200032 vs. 1048576)" in message, message
    c.close()


def test_calls_are_logged_and_counted(client, localenv):
    rid = str(uuid.uuid4())
    x = instances(3, seed=int(rid[:6], 16))
    client.infer("iris", tensor(x), headers=auth(localenv, **{"x-request-id": rid}))
    rows = wait_until(lambda: (found := localenv.sql("SELECT model, input, output FROM predictions "
                                                     "WHERE request_id = %s", (rid,))) and len(found) == 3 and found,
                      30, "the call's 3 rows in PostgreSQL")
    assert {r[0] for r in rows} == {"iris"}
    assert sorted(r[1]["petal_width"] for r in rows) == sorted(map(float, x[:, 3]))
    wait_until(lambda: localenv.promql('sum(prediction_service_requests_total{api="grpc",status="OK",'
                                       'endpoint="/inference.GRPCInferenceService/ModelInfer"}) > 0'),
               30, "gRPC calls in Prometheus with api=grpc")
