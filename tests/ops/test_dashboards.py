"""dashboards/: every panel query and alert expression parses in a real Prometheus, promtool checks and
unit-tests the rules, and every prediction_service_* name exists in the service's metrics registry."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from harness.net import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "dashboards/grafana").glob("*.json"))
RULE_FILES = sorted((ROOT / "dashboards/alerts").glob("*.rules.yml"))
RULE_TESTS = sorted((ROOT / "dashboards/alerts/tests").glob("*.yml"))
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
METRIC_NAME = re.compile(r"\bprediction_service_[a-z0-9_]+")
# The status values of a failure on the server side: REST's 5xx, and the gRPC codes the service answers
# for the same failures (timeout, overload, unavailable, internal), as docs/CONTRACTS.md lists them.
SERVER_ERRORS = 'status=~"5..|DEADLINE_EXCEEDED|RESOURCE_EXHAUSTED|UNAVAILABLE|INTERNAL|UNKNOWN|DATA_LOSS"'
SUCCESS = 'status=~"[23]..|OK"'
# Grafana variables -> values Prometheus accepts, so the rest of the expression is what gets parsed.
GRAFANA_SUBSTITUTIONS = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h", "${instance}": ".*",
                         "$instance": ".*"}


def walk_panels(panels):
    for p in panels:
        yield p
        yield from walk_panels(p.get("panels", []))


def dashboard_queries():
    out = []
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        for panel in walk_panels(dash["panels"]):
            for target in panel.get("targets", []):
                out.append(pytest.param(target["expr"], id=f"{path.stem}:{panel['title']}:{target['refId']}"))
    return out


def alert_exprs():
    out = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                out.append(pytest.param(rule["expr"], id=f"{path.stem}:{rule.get('alert') or rule.get('record')}"))
    return out


def substitute(expr: str) -> str:
    for var, value in GRAFANA_SUBSTITUTIONS.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unsubstituted Grafana variable in {expr!r}: add it to GRAFANA_SUBSTITUTIONS"
    return expr


@pytest.fixture(scope="session")
def prometheus_url():
    """A real Prometheus (the Debian package's binary) on a free port with throwaway storage."""
    base = Path(tempfile.mkdtemp(prefix="promtest-"))
    (base / "prometheus.yml").write_text("global:\n  scrape_interval: 15s\nscrape_configs: []\n")
    port = free_port()
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={base / 'prometheus.yml'}", f"--storage.tsdb.path={base / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=open(base / "prometheus.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port(port)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError((base / "prometheus.log").read_text()[-2000:])
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)


def query(url: str, expr: str) -> dict:
    req = f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:  # 400 bad_data carries the parse error as JSON
        return json.loads(e.read())


def test_a_broken_expression_is_rejected(prometheus_url):
    """The parse check below can fail: the brief's original expression (no rate, no le) is not even valid."""
    assert query(prometheus_url, "histogram_quantile(0.95, prediction_service_request_duration_seconds")["status"] == "error"
    assert query(prometheus_url, "sum(rate(up[5m]))")["status"] == "success"


@pytest.mark.parametrize("expr", dashboard_queries())
def test_dashboard_query_parses(prometheus_url, expr):
    result = query(prometheus_url, substitute(expr))
    assert result["status"] == "success", f"{expr}\n-> {result.get('error')}"


@pytest.mark.parametrize("expr", alert_exprs())
def test_alert_expression_parses(prometheus_url, expr):
    result = query(prometheus_url, expr)
    assert result["status"] == "success", f"{expr}\n-> {result.get('error')}"


def test_promtool_check_rules():
    assert RULE_FILES
    proc = subprocess.run([PROMTOOL, "check", "rules", *map(str, RULE_FILES)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_unit_tests_pass():
    assert RULE_TESTS
    proc = subprocess.run([PROMTOOL, "test", "rules", *map(str, RULE_TESTS)], capture_output=True, text=True,
                          cwd=ROOT / "dashboards/alerts/tests")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_for_severity_and_annotations_and_is_unit_tested_both_ways():
    tests = [yaml.safe_load(p.read_text()) for p in RULE_TESTS]
    cases = [(c["alertname"], bool(c.get("exp_alerts"))) for t in tests for tc in t["tests"]
             for c in tc.get("alert_rule_test", [])]
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                name = rule["alert"]
                assert "for" in rule, f"{name}: no 'for:'"
                assert rule.get("labels", {}).get("severity") in {"warning", "critical"}, f"{name}: severity"
                assert {"summary", "description"} <= set(rule.get("annotations", {})), f"{name}: annotations"
                assert (name, True) in cases, f"{name}: no promtool test where it fires"
                assert (name, False) in cases, f"{name}: no promtool test where it stays quiet"


def test_checklist_thresholds_are_the_briefs():
    rules = {r["alert"]: r["expr"] for p in RULE_FILES for g in yaml.safe_load(p.read_text())["groups"]
             for r in g["rules"]}
    assert "> 0.2" in rules["PredictionServiceHighLatencyP95"] and "histogram_quantile(0.95" in rules["PredictionServiceHighLatencyP95"]
    assert "> 0.001" in rules["PredictionServiceHighErrorRate"]
    assert "< 0.999" in rules["PredictionServiceLowSuccessRate"]
    assert "< 0.8" in rules["PredictionServiceLowCacheHitRate"]
    assert "up == 0" in rules["InstanceDown"]
    assert "> 80" in rules["HostHighCpuUsage"] and "node_cpu_seconds_total" in rules["HostHighCpuUsage"]
    assert "> 80" in rules["HostHighMemoryUsage"] and "MemAvailable" in rules["HostHighMemoryUsage"]
    assert "< 20" in rules["HostLowDiskSpace"] and "node_filesystem_avail_bytes" in rules["HostLowDiskSpace"]


def referenced_names() -> set[str]:
    text = "".join(p.read_text() for p in DASHBOARDS + RULE_FILES)
    return set(METRIC_NAME.findall(text))


def contract_names() -> set[str]:
    text = (ROOT / "docs/CONTRACTS.md").read_text()
    section = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    return set(METRIC_NAME.findall(section))


def registry_names() -> set[str]:
    """Every sample name the service's metrics module exposes (histogram _bucket/_count/_sum, counter _total)."""
    metrics = pytest.importorskip("prediction_service.metrics",
                                  reason="service/prediction_service/metrics.py not importable yet")
    from prometheus_client.metrics import MetricWrapperBase

    # prometheus-client's metrics and the service's lock-free ones (loop_metrics.py) alike.
    kinds = (MetricWrapperBase, metrics.LoopCounter, metrics.LoopHistogram)
    names = set()
    for obj in vars(metrics).values():
        if not isinstance(obj, kinds):
            continue
        for family in obj.describe():
            base = family.name
            suffixes = {"counter": ["_total", "_created"], "histogram": ["_bucket", "_count", "_sum", "_created"],
                        "summary": ["_count", "_sum", "_created"], "info": ["_info"]}.get(family.type, [""])
            names |= {base + s for s in suffixes}
    return names


def test_metric_names_exist_in_the_service_registry():
    exposed = registry_names()
    missing = referenced_names() - exposed
    assert not missing, f"dashboards/rules use names service/prediction_service/metrics.py does not expose: {sorted(missing)}"


def test_metric_names_are_in_the_contract():
    contract = contract_names()
    bases = {re.sub(r"_(bucket|count|sum)$", "", n) for n in referenced_names()}
    missing = {b for b in bases if b not in contract}
    assert not missing, f"not in docs/CONTRACTS.md: {sorted(missing)}"


def test_dashboard_is_provisioning_ready():
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        assert dash["uid"] and dash["title"], path
        assert "id" not in dash or dash["id"] is None, f"{path}: drop the numeric id, the uid identifies it"
        ds_var = [v for v in dash["templating"]["list"] if v["type"] == "datasource"]
        assert ds_var and ds_var[0]["name"] == "datasource" and ds_var[0]["query"] == "prometheus"
        panels = list(walk_panels(dash["panels"]))
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids)), f"{path}: duplicate panel ids"
        for p in panels:
            if p["type"] == "row":
                continue
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p["targets"], p["title"]
        exprs = " ".join(t["expr"] for p in panels for t in p.get("targets", []))
        for needle in ("prediction_service_requests_total", "histogram_quantile(0.5,", "histogram_quantile(0.95,",
                       "histogram_quantile(0.99,", SERVER_ERRORS, SUCCESS, "prediction_service_cache_hits_total",
                       "prediction_service_inference_duration_seconds_bucket", "prediction_service_db_write_queue_rows",
                       "prediction_service_db_rows_dropped_total", 'up{job="prediction_service"',
                       "sum by (api) (rate(prediction_service_requests_total", "sum by (le, api) (rate(",
                       'api="grpc"'):
            assert needle in exprs, f"{path}: no panel uses {needle}"
        assert "sum by (le) (rate(prediction_service_request_duration_seconds_bucket" in exprs


def test_error_and_success_filters_cover_every_api():
    """Every status filter of the dashboards and alert rules is the whole set: a panel or alert that
    matched only "5.." would not see gRPC's failures, nor one matching "[23].." its successes."""
    text = "".join(p.read_text() for p in DASHBOARDS + RULE_FILES).replace('\\"', '"')
    filters = re.findall(r'status=~"[^"]*"', text)
    assert filters and set(filters) == {SERVER_ERRORS, SUCCESS}, sorted(set(filters))
    contract = (ROOT / "docs/CONTRACTS.md").read_text()
    assert SERVER_ERRORS in contract and SUCCESS in contract, "docs/CONTRACTS.md names both sets"
