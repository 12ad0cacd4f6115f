"""`python -m bench` runs for real against the real service and produces a well-formed report.

Tiny durations (1 s runs, 1 pair): this checks that the harness works, never how fast anything is.
"""
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    if shutil.which("wrk") is None:
        pytest.fail("wrk is not installed (make test installs it: apt-get install wrk)")
    if not (ROOT / "service" / "models" / "iris" / "1").is_dir():
        pytest.fail("service/models/iris/1 is missing: run `make model`")
    out = tmp_path_factory.mktemp("bench")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BENCH_", "PREDICTION_"))}
    proc = subprocess.run([sys.executable, "-m", "bench", "--duration", "1", "--pairs", "1", "--warmup", "1",
                           "--output", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return proc, out


def test_exits_zero_and_prints_the_table(bench_run):
    proc, out = bench_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((out / "bench.json").read_text())
    lines = proc.stdout.splitlines()
    for key, s in doc["scenarios"].items():
        # The row of each scenario carries its measured numbers: req/s, then p50 <= p95 <= p99, errors.
        row = next((line for line in lines if line.startswith(s["label"])), None)
        assert row is not None, f"no table row for {s['label']!r}"
        cells = re.split(r"\s{2,}", row[len(s["label"]):].strip())
        assert float(cells[0].replace(",", "")) == round(s["rps_median"]) > 0, (key, row)
        p50, p95, p99 = (float(c) for c in cells[2:5])
        assert 0 < p50 <= p95 <= p99 < 2000, (key, row)
        assert int(cells[5]) == s["error_count"] >= 0, (key, row)
    # Every goal is printed with its measured value, and its verdict agrees with that value.
    for g in doc["goals"]:
        line = next((line.strip() for line in lines if line.strip()[6:].startswith(g["goal"] + ":")), None)
        assert line is not None, f"goal {g['goal']!r} not printed"
        value = float(re.search(r": ([-+0-9.e]+)", line[6:]).group(1))
        assert math.isclose(value, g["value"], rel_tol=5e-3, abs_tol=1e-9), (line, g)
        expected = g["value"] == 0 if g["must_be_zero"] else \
            (g["value"] >= g["threshold"] if g["at_least"] else g["value"] < g["threshold"])
        assert g["passed"] is expected and line.startswith("PASS" if expected else "MISS"), (line, g)


def test_json_has_numbers_for_every_scenario(bench_run):
    proc, out = bench_run
    doc = json.loads((out / "bench.json").read_text())
    assert doc["mode"] == "service"
    assert set(doc["scenarios"]) == {"a", "b", "b-v2", "c", "d", "c-shared", "c-v2", "c-off", "c-ack",
                                     "h@32", "h-off@32", "h@1", "h-off@1"}
    for key, s in doc["scenarios"].items():
        # (a) runs before each of its four candidates in every round, (b) also before (b-v2), (c) before
        # (c-v2) and (c-ack), and after (c-off)
        assert s["runs"] == {"a": 4, "b": 2, "c": 4}.get(key, 1), key
        assert s["rps_median"] > 0 and s["requests"] > 0, key
        for pct in ("50", "95", "99"):
            assert s["latency_ms_median"][pct] > 0, (key, pct)
        assert isinstance(s["error_count"], int), key
    assert set(doc["ratios"]) == {"b/a", "b-v2/b", "c/a", "d/a", "c/d", "c-shared/a", "c-shared/c", "c-v2/c",
                                  "c/c-off", "c-ack/c", "h@32/h-off@32", "h@1/h-off@1"}
    assert doc["scenarios"]["b-v2"]["url"].endswith("/v2/models/iris/infer")
    assert doc["scenarios"]["c-v2"]["url"].endswith("/v2/models/iris/infer")
    assert doc["model"]["heavy_model"] == "iris_ensemble"
    for key in ("h@32", "h-off@32", "h@1", "h-off@1"):
        assert doc["scenarios"][key]["url"].endswith("/api/v1/models/iris_ensemble/predict"), key
        assert doc["scenarios"][key]["connections"] == int(key.split("@")[1]), key
    assert doc["scenarios"]["h@32"]["url"].split("/api")[0] == doc["scenarios"]["c"]["url"].split("/api")[0]
    assert doc["scenarios"]["h-off@32"]["url"].split("/api")[0] == doc["scenarios"]["c-off"]["url"].split("/api")[0]
    # (c) runs the default deployed version (iris v1, local tier), (c-shared) a shared-tier one
    assert doc["model"]["version"] == "1" and doc["model"]["cache_tier"] == "local"
    assert doc["model"]["shared_version"] == "2" and "?version=2" in doc["scenarios"]["c-shared"]["url"]
    assert "?version" not in doc["scenarios"]["c"]["url"]
    for name, r in doc["ratios"].items():
        assert r["min"] <= r["median"] <= r["max"] and r["median"] > 0, name
    assert doc["goals"] and all(isinstance(g["passed"], bool) for g in doc["goals"])
    # warm-up runs are recorded but not counted
    assert {r["round"] for r in doc["runs"]} == {0, 1}
    assert (out / "bench.md").read_text().startswith("Measured ")


def test_scenarios_exercise_what_they_claim(bench_run):
    """The cache-hit run hits, the cache-miss runs miss, and the logging service really logs."""
    _, out = bench_run
    doc = json.loads((out / "bench.json").read_text())
    probe = {k: s["probe"] for k, s in doc["scenarios"].items()}
    hits = lambda p: sum(v for k, v in p.items() if k.startswith("cache_hits_"))  # noqa: E731
    for k in ("b", "b-v2"):
        assert hits(probe[k]) > 0.95 * (hits(probe[k]) + probe[k]["cache_misses"]), k
    for k in ("c", "d", "c-shared", "c-v2", "c-off", "c-ack", "h@32", "h-off@32", "h@1", "h-off@1"):
        assert probe[k]["cache_misses"] > 0.95 * (hits(probe[k]) + probe[k]["cache_misses"]), k
    assert probe["c-shared"]["cache_errors"] == 0  # the shared tier really talked to Redis, without failures
    assert doc["database"]["predictions_rows_at_end"] > 0
    # Batching on where the metadata says so, off on the batching-off service: every miss went through
    # an inference call counted by the batching metrics, or through none.
    for k in ("c", "c-v2", "h@32", "h@1"):
        assert probe[k]["cache_misses"] > 0 and abs(probe[k]["batch_requests"] - probe[k]["cache_misses"]) <= 0.01 * \
            probe[k]["cache_misses"] + 1, k  # (a request in flight when wrk stopped may fall on either side)
        assert 0 < probe[k]["batch_calls"] <= probe[k]["batch_requests"], k
    for k in ("c-off", "h-off@32", "h-off@1"):
        assert probe[k].get("batch_calls", 0) == 0, k
    # The acknowledging service wrote a row for each answered miss while its run lasted (it answers
    # only after the commit), give or take the requests in flight when wrk stopped.
    assert probe["c-ack"]["db_rows_written"] >= probe["c-ack"]["cache_misses"] - 64
