"""Prometheus scrapes every service instance (all targets up) and has every alert rule loaded."""
import json
import time

import pytest
import yaml

from host_expectations import ROOT, run_ok


@pytest.fixture(scope="module")
def prometheus(expected, localenv) -> str:
    return f"http://127.0.0.1:{localenv['prometheus_port']}"


def _api(host, url: str) -> dict:
    doc = json.loads(run_ok(host, "curl -sf %s", url))
    assert doc.get("status") == "success", f"{url}: {doc}"
    return doc["data"]


def test_every_target_up(host, prometheus, localenv):
    wanted = {f"127.0.0.1:{p}" for p in localenv["service_ports"]}
    wanted |= {f"127.0.0.1:{localenv[f'{name}_port']}" for name in ("node_exporter", "postgres_exporter", "redis_exporter")}
    deadline = time.monotonic() + 30  # a target is "unknown" until its first scrape
    while True:
        targets = _api(host, f"{prometheus}/api/v1/targets?state=active")["activeTargets"]
        seen = {t["scrapeUrl"].split("/")[2]: t for t in targets}
        missing = sorted(wanted - set(seen))
        down = sorted(f"{a} ({t['health']}: {t.get('lastError', '')})" for a, t in seen.items() if t["health"] != "up")
        if (not missing and not down) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not missing, f"Prometheus does not scrape {missing}"
    assert not down, f"targets not up: {down}"


def test_service_instances_are_labelled_by_name(host, prometheus, localenv):
    targets = _api(host, f"{prometheus}/api/v1/targets?state=active")["activeTargets"]
    names = sorted(t["labels"]["instance"] for t in targets if t["labels"].get("job") == "prediction_service")
    assert names == sorted(f"local-{i + 1}" for i in range(len(localenv["service_ports"]))), names


def test_every_alert_rule_loaded(host, prometheus):
    wanted = set()
    for f in sorted((ROOT / "dashboards" / "alerts").glob("*.rules.yml")):
        for group in yaml.safe_load(f.read_text())["groups"]:
            wanted |= {r["alert"] for r in group["rules"] if "alert" in r}
    groups = _api(host, f"{prometheus}/api/v1/rules")["groups"]
    loaded = {r["name"]: r for g in groups for r in g["rules"]}
    assert wanted <= set(loaded), f"alert rules not loaded: {sorted(wanted - set(loaded))}"
    broken = {n: r["lastError"] for n, r in loaded.items() if r.get("health") == "err"}
    assert not broken, f"alert rules failing to evaluate: {broken}"
