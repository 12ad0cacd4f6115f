"""Monitoring of a stack as deployed: its Prometheus scrapes the replicas and the Docker host's
node-exporter, every dashboard panel's PromQL returns series once there is traffic, and every alert
rule measures something that exists (the brief's monitoring checklist has data)."""
import pytest

from harness.waiting import wait_until
from docker_support import IRIS
from harness.promql_sources import alert_rules, concrete, dashboard_panels, signal_of

PANELS = dashboard_panels()
ALERTS = alert_rules()


@pytest.fixture(scope="module")
def watched(prod):
    """prod after mixed traffic (misses, hits), once Prometheus has scraped it."""
    s = prod.session()
    for i in range(40):
        s.post(f"{prod.url}/api/v1/models/iris/predict", json={**IRIS, "sepal_width": 3.0 + i / 100}, timeout=10)
        s.post(f"{prod.url}/api/v1/models/iris/predict", json=IRIS, timeout=10)
    wait_until(lambda: prod.promql("sum(rate(prediction_service_request_duration_seconds_count[1m])) > 0"), 60,
               "the request rate in Prometheus")
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


def test_no_service_alert_fires_on_the_healthy_stack(watched):
    # The Host* alerts measure the Docker host, which the test run itself keeps busy: not the stack's health.
    firing = [a["metric"] for a in watched.promql("ALERTS")
              if a["metric"].get("alertstate") == "firing" and not a["metric"]["alertname"].startswith("Host")]
    assert not firing, f"alerts firing on a healthy stack: {firing}"
