"""Prometheus metrics of the service — the single source of their names (docs/CONTRACTS.md).

Metrics live in the default registry (so the process_* and python_* collectors come along) and are
module-level objects: the storage writer imports the db_* ones from here. One service process per
instance keeps every series per-instance, so no multiprocess mode is needed.
"""
from __future__ import annotations

import platform

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from . import __version__
from .loop_metrics import LoopCounter, LoopHistogram

NS = "prediction_service"

# Millisecond-scale: a cached answer takes well under 1 ms, the goal for p99 is 20 ms.
REQUEST_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05,
                   0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
INFERENCE_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                     0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

# Updated on every request (and read) only on the event loop's thread: lock-free (loop_metrics.py).
# api: "v1" (/api/v1), "v2" (the Open Inference Protocol's /v2) or "none" (probes, documents).
requests_total = LoopCounter(
    f"{NS}_requests_total", "HTTP requests answered, by route template, method, status code and API.",
    ["endpoint", "method", "status", "api"])
request_duration_seconds = LoopHistogram(
    f"{NS}_request_duration_seconds", "Time from request received to response ready, in seconds.",
    ["endpoint", "method", "api"], buckets=REQUEST_BUCKETS)
requests_in_progress = Gauge(
    f"{NS}_requests_in_progress", "API requests being handled right now (bounded by PREDICTION_MAX_IN_FLIGHT).")
requests_rejected_total = Counter(
    f"{NS}_requests_rejected_total", "API requests refused to protect the service (overload or timeout).",
    ["reason"])

cache_hits_total = LoopCounter(
    f"{NS}_cache_hits_total", "Predictions served from the cache, by model and tier (local or redis).",
    ["model", "tier"])
cache_misses_total = LoopCounter(
    f"{NS}_cache_misses_total", "Predictions not found in either cache tier (computed by the model).",
    ["model"])
cache_errors_total = Counter(
    f"{NS}_cache_errors_total", "Redis cache operations that failed or were skipped while Redis was down.",
    ["operation"])

inference_duration_seconds = Histogram(
    f"{NS}_inference_duration_seconds", "Time spent in ONNX Runtime per model call, in seconds.",
    ["model", "version"], buckets=INFERENCE_BUCKETS)

# Adaptive batching (batching.py), for model versions with max_batch_size > 1: observed on the
# event loop's thread, once per inference call (sizes) or per request (queue wait).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
QUEUE_WAIT_BUCKETS = (0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                      0.1, 0.25, 1.0)
batch_requests = LoopHistogram(
    f"{NS}_batch_requests", "Requests served by one inference call under adaptive batching (1: the request ran alone).",
    ["model", "version"], buckets=BATCH_BUCKETS)
batch_rows = LoopHistogram(
    f"{NS}_batch_rows", "Instances (rows) in one inference call under adaptive batching, at most the version's "
    "max_batch_size (a larger request runs alone).", ["model", "version"], buckets=BATCH_BUCKETS)
batch_queue_wait_seconds = LoopHistogram(
    f"{NS}_batch_queue_wait_seconds", "Time a request's cache misses waited in the batching queue before their "
    "inference call started (about 0 when the model was idle), in seconds.", ["model", "version"],
    buckets=QUEUE_WAIT_BUCKETS)

db_write_queue_rows = Gauge(
    f"{NS}_db_write_queue_rows", "Prediction rows waiting in memory to be written to the database.")
db_rows_written_total = Counter(
    f"{NS}_db_rows_written_total", "Prediction rows written to the database.")
db_rows_dropped_total = Counter(
    f"{NS}_db_rows_dropped_total", "Prediction rows dropped: write queue full, row not storable, or not written at shutdown.")
db_write_errors_total = Counter(
    f"{NS}_db_write_errors_total", "Failed database write attempts (each is retried with backoff).")
db_acks_total = Counter(
    f"{NS}_db_acks_total", "Answers that waited for their rows' commit (PREDICTION_DB_ACK_AFTER_WRITE), by outcome: "
    "committed, or not_committed (database down, the wait timed out, or a row refused; the rows stay buffered).",
    ["outcome"])
for _outcome in ("committed", "not_committed"):
    db_acks_total.labels(outcome=_outcome)

models_loaded = Gauge(f"{NS}_models_loaded", "Model versions loaded and being served.")
model_load_failures_total = Counter(
    f"{NS}_model_load_failures_total", "Model versions that failed to load, by model name.", ["model"])

build_info = Gauge(f"{NS}_build_info", "Build information; the value is always 1.", ["version", "python"])
build_info.labels(version=__version__, python=platform.python_version()).set(1)


def exposition() -> tuple[bytes, str]:
    """The current metrics in the Prometheus text format, and its content type."""
    return generate_latest(), CONTENT_TYPE_LATEST
