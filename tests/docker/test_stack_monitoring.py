"""Monitoring of a stack as deployed: its Prometheus scrapes the replicas, the Docker host's
node-exporter and the data layer's exporters, every dashboard panel's PromQL returns series once there
is traffic and a backup, and every alert rule measures something that exists (the brief's monitoring
checklist has data)."""
import numpy as np
import pytest
import tritonclient.grpc as triton

from harness.waiting import wait_until
from docker_support import IRIS
from harness.promql_sources import alert_rules, concrete, dashboard_panels, signal_of

PANELS = dashboard_panels()
ALERTS = alert_rules()


@pytest.fixture(scope="module")
def watched(prod):
    """prod after mixed traffic (misses, hits; REST and gRPC) and a backup (the backup panels and
    DatabaseBackupTooOld describe the newest dump, through node-exporter's textfile volume), once
    Prometheus has scraped it."""
    prod.playbook("backup.yml").ok()
    s = prod.session()
    for i in range(40):
        s.post(f"{prod.url}/api/v1/models/iris/predict", json={**IRIS, "sepal_width": 3.0 + i / 100}, timeout=10)
        s.post(f"{prod.url}/api/v1/models/iris/predict", json=IRIS, timeout=10)
    # gRPC through the gateway too: the dashboard's row by API has a gRPC panel.
    grpc = triton.InferenceServerClient(prod.url.removeprefix("https://"), ssl=True, root_certificates=prod.cacert)
    x = triton.InferInput("input", [1, 4], "FP32")
    x.set_data_from_numpy(np.array([[6.0, 3.0, 4.5, 1.5]], np.float32))
    for _ in range(10):
        grpc.infer("iris", [x], headers={"x-api-key": prod.api_key})
    grpc.close()
    wait_until(lambda: prod.promql("sum(rate(prediction_service_request_duration_seconds_count[1m])) > 0"), 60,
               "the request rate in Prometheus")
    wait_until(lambda: prod.promql("prediction_db_backup_dumps"), 60, "the backup's metrics in Prometheus")
    return prod


def test_host_metrics_come_from_the_stacks_node_exporter(watched):
    # Found by its name in Docker's DNS: the instance is the node-exporter container's address.
    exporter = watched.container("monitoring-node-exporter")
    address = exporter.attrs["NetworkSettings"]["Networks"][f"{watched.prefix}-app"]["IPAddress"]
    wait_until(lambda: watched.promql(f'up{{job="node", instance="{address}:9100"}} == 1'), 60, "node-exporter up")
    root = watched.promql('node_filesystem_size_bytes{mountpoint="/"}')
    assert root and float(root[0]["value"][1]) > 0, "the host's root filesystem, read through /host"
    assert watched.promql("node_memory_MemTotal_bytes") and watched.promql("node_cpu_seconds_total")


@pytest.mark.parametrize("source, title, exprs", PANELS, ids=[t for _, t, _ in PANELS])
def test_every_dashboard_panel_has_data(watched, source, title, exprs):
    wait_until(lambda: any(watched.promql(concrete(e)) for e in exprs), 60, f"data for panel {title!r}")


@pytest.mark.parametrize("source, name, expr", ALERTS, ids=[n for _, n, _ in ALERTS])
def test_every_alert_measures_something_that_exists(watched, source, name, expr):
    watched.promql(expr)  # the whole rule parses and evaluates
    signal = signal_of(expr)
    wait_until(lambda: watched.promql(signal), 60, f"series for alert {name}: {' '.join(signal.split())}")


# Alerts about the traffic a stack gets rather than about its health: the Docker suites share prod for
# half an hour and send it distinct inputs (cache misses) and bad keys and bodies (4xx) on purpose, so
# these may rightly fire there. Their rules are proven by promtool's unit tests (dashboards/alerts/tests).
TRAFFIC_ALERTS = {"PredictionServiceLowCacheHitRate", "PredictionServiceLowSuccessRate", "RedisLowHitRatio"}
assert TRAFFIC_ALERTS <= {name for _, name, _ in ALERTS}, "a rule named here was renamed or removed"


def test_no_service_alert_fires_on_the_healthy_stack(watched):
    firing = [a["metric"] for a in watched.promql("ALERTS") if a["metric"].get("alertstate") == "firing"]
    # Not the stack's health: the traffic alerts above, and the Host* alerts, which measure the Docker
    # host that the test run itself keeps busy.
    faults = [a for a in firing if a["alertname"] not in TRAFFIC_ALERTS and not a["alertname"].startswith("Host")]
    print(f"\n[monitoring] firing: {[a['alertname'] for a in firing] or 'none'}")
    assert not faults, f"alerts firing on a healthy stack: {faults}"
