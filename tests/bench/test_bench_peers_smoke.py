"""`python -m bench.peers` (make bench-peers) runs for real against every server and writes its report.

One short round (1 s runs): this checks that MLServer, BentoML, LitServe, the service and the
baseline all start, answer the same prediction and are measured without errors, and that the JSON,
the table and the picture agree — never how fast anything is. The peers' venvs are made under
var/bench/peers-venvs from the package index on the first run (minutes, see README) and reused after.
"""
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVERS = ["baseline", "service-v1", "service-v2", "mlserver", "bentoml", "litserve"]
CASES = ["fixed", "random"]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def peers_run(tmp_path_factory):
    if shutil.which("wrk") is None:
        pytest.fail("wrk is not installed (make test installs it: apt-get install wrk)")
    if not (ROOT / "service" / "models" / "iris" / "1").is_dir():
        pytest.fail("service/models/iris/1 is missing: run `make model`")
    out = tmp_path_factory.mktemp("bench-peers")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BENCH_", "PREDICTION_"))}
    proc = subprocess.run([sys.executable, "-m", "bench.peers", "--duration", "1", "--rounds", "1", "--warmup", "0",
                           "--output", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1700)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, out, json.loads((out / "peers.json").read_text())


def test_every_server_answers_the_same_prediction_without_errors(peers_run):
    _, _, doc = peers_run
    assert list(doc["results"]) == SERVERS
    base = doc["answers"]["baseline"]
    for server in SERVERS:
        answer = doc["answers"][server]
        assert answer["label"] == base["label"], server
        assert answer["probabilities"] == pytest.approx(base["probabilities"], abs=1e-5), server
        for case in CASES:
            e = doc["results"][server][case]
            assert e["rps_median"] > 0 and e["requests"] > 0, (server, case)
            assert e["non_2xx"] == 0 and e["socket_errors"] == 0, (server, case, e)
            assert 0 < e["latency_ms"]["50"] <= e["latency_ms"]["99"], (server, case)
            assert e["cpu_us_per_request"] > 0, (server, case)


def test_ratios_are_each_run_over_the_baseline_run_before_it(peers_run):
    _, _, doc = peers_run
    runs = [r for r in doc["runs"] if r["round"] == 1]
    for case in CASES:
        assert doc["results"]["baseline"][case]["ratio_to_baseline"]["median"] == 1
        for server in SERVERS[1:]:
            i = next(n for n, r in enumerate(runs) if r["key"] == f"{server}:{case}")
            assert runs[i - 1]["key"] == f"baseline:{case}"
            ratio = doc["results"][server][case]["ratio_to_baseline"]
            assert ratio["median"] == pytest.approx(runs[i]["rps"] / runs[i - 1]["rps"]), (server, case)


def test_the_service_ran_as_deployed(peers_run):
    """Fixed body: answered from the cache; random body: a miss each time; both logged to PostgreSQL."""
    _, _, doc = peers_run
    for key in ("service-v1", "service-v2"):
        fixed, rand = (doc["results"][key][c]["probe"] for c in CASES)
        hits = lambda p: sum(v for k, v in p.items() if k.startswith("cache_hits_"))  # noqa: E731
        assert hits(fixed) > 0.95 * (hits(fixed) + fixed.get("cache_misses", 0)), key
        assert rand["cache_misses"] > 0.95 * (hits(rand) + rand["cache_misses"]), key
        assert fixed.get("responses_not_2xx", 0) == rand.get("responses_not_2xx", 0) == 0, key
    assert doc["service_db_rows_at_end"] > 0


def test_table_json_and_picture_agree(peers_run):
    proc, out, doc = peers_run
    lines = proc.stdout.splitlines()
    for server in SERVERS:
        label = doc["servers"][server]["label"]
        for case in CASES:
            row = next((ln for ln in lines if re.match(rf"{re.escape(label)}\s+{case}\s", ln)), None)
            assert row is not None, f"no table row for {label} / {case}"
            cells = re.split(r"\s{2,}", row[len(label):].strip())
            assert int(cells[2].replace(",", "")) == round(doc["results"][server][case]["rps_median"]), row
            assert int(cells[6]) == 0, row  # non-2xx
        assert doc["servers"][server]["does"] in proc.stdout  # what it does per request is said
    assert (out / "peers.md").read_text().count("\n| ") == len(SERVERS) * len(CASES) + 1
    png = (out / "peers.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    assert width >= 800 and height >= 400
