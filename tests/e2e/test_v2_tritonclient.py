"""The official Open Inference Protocol client (tritonclient[http]) against the local environment,
through the TLS gateway and straight to one instance: the answers equal /api/v1's."""
import gevent.ssl
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@pytest.fixture(params=["gateway", "direct"])
def client(request, localenv):
    if request.param == "gateway":
        url = localenv.url.removeprefix("https://")
        c = triton.InferenceServerClient(
            url, ssl=True, ssl_context_factory=lambda: gevent.ssl.create_default_context(cafile=localenv.cacert))
    else:
        c = triton.InferenceServerClient(localenv.state["LOCALENV_SERVICE_URLS"].split()[0].removeprefix("http://"))
    yield c
    c.close()


def auth(localenv) -> dict:
    return {"X-API-Key": localenv.api_key}  # a fresh dict: tritonclient adds its own headers to it


def instances(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform([4.3, 2.0, 1.0, 0.1], [7.9, 4.4, 6.9, 2.5], (n, 4)).astype(np.float32)


def v1_answer(localenv, x: np.ndarray, version: str | None = None) -> dict:
    r = localenv.session().post(f"{localenv.url}/api/v1/models/iris/predict", params={"version": version} if version else None,
                                json={"instances": [dict(zip(FEATURES, map(float, row))) for row in x]}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def infer(client, localenv, x: np.ndarray, version: str = ""):
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)  # binary tensor data, tritonclient's default
    return client.infer("iris", [tensor], model_version=version, headers=auth(localenv))


def test_health_and_metadata(client, localenv):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("iris") and client.is_model_ready("iris", "2")
    assert not client.is_model_ready("nope")
    assert "binary_tensor_data" in client.get_server_metadata(headers=auth(localenv))["extensions"]
    meta = client.get_model_metadata("iris", headers=auth(localenv))
    assert [i["name"] for i in meta["inputs"]] == FEATURES and meta["versions"] == ["1", "2"]
    assert [o["name"] for o in meta["outputs"]] == ["label", "probabilities"]


@pytest.mark.parametrize("n", [1, 1000])
@pytest.mark.parametrize("version", ["", "2"])
def test_infer_equals_v1(client, localenv, n, version):
    x = instances(n, seed=n + len(version))
    result = infer(client, localenv, x, version)
    expected = v1_answer(localenv, x, version or None)
    assert result.get_response()["model_version"] == expected["version"]
    assert result.as_numpy("label").astype(str).tolist() == expected["predictions"]
    proba = result.as_numpy("probabilities")
    assert proba.shape == (n, 3) and proba.dtype == np.float32
    assert np.allclose(proba, [[p[k] for k in ("setosa", "versicolor", "virginica")] for p in expected["probabilities"]],
                       atol=1e-6)


def test_json_tensors_and_requested_outputs(client, localenv):
    x = instances(3, seed=7)
    tensors = []
    for i, name in enumerate(FEATURES):  # one [N] tensor per feature, as JSON
        t = triton.InferInput(name, [3], "FP64")
        t.set_data_from_numpy(x[:, i].astype(np.float64), binary_data=False)
        tensors.append(t)
    result = client.infer("iris", tensors, request_id="e2e-json", headers=auth(localenv),
                          outputs=[triton.InferRequestedOutput("label", binary_data=False)])
    assert result.get_response()["id"] == "e2e-json"
    assert [o["name"] for o in result.get_response()["outputs"]] == ["label"]
    assert result.as_numpy("label").tolist() == v1_answer(localenv, x)["predictions"]


def test_errors_reach_the_client(client, localenv):
    x = instances(1, seed=1)
    tensor = triton.InferInput("input", [1, 4], "FP32")
    tensor.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as unknown:
        client.infer("nope", [tensor], headers=auth(localenv))
    assert unknown.value.status() == "404" and "no model named 'nope'" in unknown.value.message()
    with pytest.raises(InferenceServerException) as unauthorized:
        client.infer("iris", [tensor])
    assert unauthorized.value.status() == "401" and "missing credentials" in unauthorized.value.message()
    bad = triton.InferInput("input", [1, 4], "FP32")
    bad.set_data_from_numpy(np.array([[500, 3, 1, 0.2]], dtype=np.float32))
    with pytest.raises(InferenceServerException) as out_of_range:
        client.infer("iris", [bad], headers=auth(localenv))
    assert out_of_range.value.status() == "400" and "between 0 and 100" in out_of_range.value.message()
