"""Every PromQL expression of the dashboards and alert rules runs against the environment's Prometheus;
dashboard panels show data after traffic; no alert fires while the platform is healthy."""
import numpy as np
import pytest
import tritonclient.grpc as triton

from harness.promql_sources import alert_rules, concrete, dashboard_panels
from harness.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


PANELS = dashboard_panels()
ALERTS = alert_rules()


def test_there_is_something_to_check():
    assert PANELS and ALERTS, "no dashboard panels or alert rules found under dashboards/"


@pytest.mark.parametrize("source, name, expr", [(f, t, e) for f, t, es in PANELS for e in es] + ALERTS,
                         ids=lambda v: v if isinstance(v, str) and len(v) < 60 and "\n" not in v else None)
def test_expression_evaluates(localenv, source, name, expr):
    localenv.promql(concrete(expr))  # asserts status success


@pytest.fixture(scope="module")
def after_traffic(localenv):
    """Some mixed traffic (misses, hits, a batch; REST and gRPC), then wait until Prometheus has seen it twice."""
    s = localenv.session()
    body = {"sepal_length": 6.0, "sepal_width": 3.0, "petal_length": 4.5, "petal_width": 1.5}
    for i in range(30):
        s.post(f"{localenv.url}/api/v1/models/iris/predict", json={**body, "sepal_length": 6.0 + i / 100}, timeout=10)
        s.post(f"{localenv.url}/api/v1/models/iris/predict", json=body, timeout=10)  # cache hits
    grpc = triton.InferenceServerClient(localenv.url.removeprefix("https://"), ssl=True,
                                        root_certificates=localenv.cacert)
    x = triton.InferInput("input", [1, 4], "FP32")
    x.set_data_from_numpy(np.array([[6.0, 3.0, 4.5, 1.5]], np.float32))
    for _ in range(10):
        grpc.infer("iris", [x], headers={"x-api-key": localenv.api_key})
    grpc.close()
    wait_until(lambda: localenv.promql("sum(rate(prediction_service_request_duration_seconds_count[1m])) > 0"),
               40, "request rate visible in Prometheus")
    return True


@pytest.mark.parametrize("source, title, exprs", PANELS, ids=[t for _, t, _ in PANELS])
def test_dashboard_panel_has_data(localenv, after_traffic, source, title, exprs):
    def any_data():
        return any(localenv.promql(concrete(e)) for e in exprs)
    wait_until(any_data, 30, f"data for panel {title!r} of {source}")


def test_no_alert_fires_under_healthy_traffic(localenv, after_traffic):
    r = localenv.promql("ALERTS")
    firing = [a["metric"] for a in r if a["metric"].get("alertstate") == "firing"]
    assert not firing, f"alerts firing on a healthy environment: {firing}"
