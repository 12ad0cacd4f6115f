"""/metrics: the names the dashboards use, and output that passes `promtool check metrics`."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from service_support import AUTH, IRIS
from metrics_text import sample

CONTRACT_NAMES = [
    "prediction_service_requests_total", "prediction_service_request_duration_seconds",
    "prediction_service_requests_in_progress", "prediction_service_requests_rejected_total",
    "prediction_service_cache_hits_total", "prediction_service_cache_misses_total",
    "prediction_service_cache_errors_total", "prediction_service_inference_duration_seconds",
    "prediction_service_db_write_queue_rows", "prediction_service_db_rows_written_total",
    "prediction_service_db_rows_dropped_total", "prediction_service_db_write_errors_total",
    "prediction_service_db_acks_total",
    "prediction_service_models_loaded", "prediction_service_model_load_failures_total",
    "prediction_service_build_info", "prediction_service_batch_requests", "prediction_service_batch_rows",
    "prediction_service_batch_queue_wait_seconds",
]


async def _exercised_metrics(client) -> str:
    await client.post("/api/v1/models/iris/predict", json=IRIS, headers=AUTH)
    await client.post("/api/v1/models/iris/predict", json=IRIS, headers=AUTH)
    await client.post("/api/v1/models/iris/predict", json={"bad": 1}, headers=AUTH)
    await client.get("/no/such/path")
    resp = await client.get("/metrics")
    assert resp.status == 200 and resp.content_type == "text/plain"
    return await resp.text()


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool (Debian package prometheus) not installed")
async def test_promtool_accepts_the_metrics(client):
    text = await _exercised_metrics(client)
    proc = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "" and proc.stderr.strip() == ""


async def test_contract_names_are_exported(client):
    text = await _exercised_metrics(client)
    for name in CONTRACT_NAMES:
        assert f"# TYPE {name} " in text, name


async def test_requests_are_labelled_by_route_template(client):
    text = await _exercised_metrics(client)
    route = "/api/v1/models/{name}/predict"
    assert sample(text, "prediction_service_requests_total", endpoint=route, method="POST", status="200") >= 2
    assert sample(text, "prediction_service_requests_total", endpoint=route, method="POST", status="422") >= 1
    # Arbitrary client paths share one label value (no series explosion).
    assert sample(text, "prediction_service_requests_total", endpoint="unmatched", method="GET", status="404") >= 1
    assert sample(text, "prediction_service_request_duration_seconds_bucket", endpoint=route, method="POST",
                  le="0.005") >= 1
    assert sample(text, "prediction_service_cache_hits_total", model="iris", tier="local") >= 1
    assert sample(text, "prediction_service_inference_duration_seconds_count", model="iris", version="1") >= 1
    assert sample(text, "prediction_service_models_loaded") == 4
