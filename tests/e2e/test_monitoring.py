"""Every PromQL expression of the dashboards and alert rules runs against the environment's Prometheus;
dashboard panels show data after traffic; no alert fires while the platform is healthy."""
import json
import re

import pytest
import yaml

from localenv_support import ROOT, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _dashboard_panels() -> list[tuple[str, str, list[str]]]:
    """(dashboard file, panel title, [expr…]) for every panel with queries, rows' nested panels included."""
    out = []
    for f in sorted((ROOT / "dashboards" / "grafana").glob("*.json")):
        doc = json.loads(f.read_text())
        doc = doc.get("dashboard", doc)
        stack = list(doc.get("panels", []))
        while stack:
            p = stack.pop(0)
            stack.extend(p.get("panels", []))
            exprs = [t["expr"] for t in p.get("targets", []) if t.get("expr")]
            if exprs:
                out.append((f.name, p.get("title", "?"), exprs))
    return out


def _alert_exprs() -> list[tuple[str, str, str]]:
    out = []
    for f in sorted((ROOT / "dashboards" / "alerts").glob("*.rules.yml")):
        for group in yaml.safe_load(f.read_text())["groups"]:
            for rule in group["rules"]:
                out.append((f.name, rule.get("alert") or rule.get("record"), rule["expr"]))
    return out


def _concrete(expr: str) -> str:
    """Replace Grafana's template variables the way Grafana would for 'All' over a short range."""
    expr = expr.replace("$__rate_interval", "1m").replace("$__interval", "15s").replace("$__range", "5m")
    expr = re.sub(r"\$\{?instance\}?", ".*", expr)
    return re.sub(r"\$\{?datasource\}?", "prometheus", expr)


PANELS = _dashboard_panels()
ALERTS = _alert_exprs()


def test_there_is_something_to_check():
    assert PANELS and ALERTS, "no dashboard panels or alert rules found under dashboards/"


@pytest.mark.parametrize("source, name, expr", [(f, t, e) for f, t, es in PANELS for e in es] + ALERTS,
                         ids=lambda v: v if isinstance(v, str) and len(v) < 60 and "\n" not in v else None)
def test_expression_evaluates(localenv, source, name, expr):
    localenv.promql(_concrete(expr))  # asserts status success


@pytest.fixture(scope="module")
def after_traffic(localenv):
    """Some mixed traffic (misses, hits, a batch), then wait until Prometheus has seen it twice."""
    s = localenv.session()
    body = {"sepal_length": 6.0, "sepal_width": 3.0, "petal_length": 4.5, "petal_width": 1.5}
    for i in range(30):
        s.post(f"{localenv.url}/api/v1/models/iris/predict", json={**body, "sepal_length": 6.0 + i / 100}, timeout=10)
        s.post(f"{localenv.url}/api/v1/models/iris/predict", json=body, timeout=10)  # cache hits
    wait_until(lambda: localenv.promql("sum(rate(prediction_service_request_duration_seconds_count[1m])) > 0"),
               40, "request rate visible in Prometheus")
    return True


@pytest.mark.parametrize("source, title, exprs", PANELS, ids=[t for _, t, _ in PANELS])
def test_dashboard_panel_has_data(localenv, after_traffic, source, title, exprs):
    def any_data():
        return any(localenv.promql(_concrete(e)) for e in exprs)
    wait_until(any_data, 30, f"data for panel {title!r} of {source}")


def test_no_alert_fires_under_healthy_traffic(localenv, after_traffic):
    r = localenv.promql("ALERTS")
    firing = [a["metric"] for a in r if a["metric"].get("alertstate") == "firing"]
    assert not firing, f"alerts firing on a healthy environment: {firing}"
