"""Operations against the running environment: backup then restore gives the same data; the
testinfra suite (tests/host) passes against local://; a second `make up` changes nothing."""
import itertools
import os
import socket
import subprocess
import sys
import time

import pytest
import requests

from harness.postgres import timescaledb_missing
from harness.waiting import wait_until
from localenv_support import ROOT, wait_instances_ready

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DIABETES = ("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6")
_MARKER_VALUES = (0.5 + n / 1000 for n in itertools.count())
CHECKSUM = ("SELECT count(*), coalesce(md5(string_agg(request_id || ':' || output::text, ',' "
            "ORDER BY request_id, time)), '') FROM predictions")


def _flushed(localenv) -> tuple:
    """The predictions checksum once every row answered so far is in the table: one marker prediction
    straight to each instance, then wait for the markers' rows. Each instance writes its rows in the
    order it answered them, so with its marker in the table, all its earlier rows are too (a condition,
    not a guess that the table stopped changing)."""
    markers = []
    for url in localenv.state["LOCALENV_SERVICE_URLS"].split():
        value = next(_MARKER_VALUES)  # never a repeat, so never answered without its own row
        r = requests.post(f"{url}/api/v1/models/diabetes/predict", headers={"X-API-Key": localenv.api_key},
                          json={k: value for k in DIABETES}, timeout=30)
        assert r.status_code == 200, r.text
        markers.append(r.json()["request_id"])
    wait_until(lambda: localenv.sql("SELECT count(*) FROM predictions WHERE request_id = ANY(%s)",
                                    (markers,))[0][0] == len(markers), 120, f"the marker rows {markers}")
    return localenv.sql(CHECKSUM)[0]


def test_backup_then_restore_gives_the_same_data(localenv):
    s = localenv.session()
    for i in range(20):
        assert s.post(f"{localenv.url}/api/v1/models/diabetes/predict",
                      json={k: 0.01 * i for k in DIABETES},
                      timeout=10).status_code == 200
    before = _flushed(localenv)
    assert before[0] > 0

    backup = localenv.playbook("backup.yml")
    assert backup.returncode == 0, backup.stdout[-4000:] + backup.stderr[-2000:]

    # Lose data, then restore with the service stopped (as playbooks/restore.yml asks).
    localenv.sql("DELETE FROM predictions")
    assert localenv.sql("SELECT count(*) FROM predictions")[0][0] == 0
    stop = localenv.supervisorctl("stop", "service-1", "service-2")
    assert stop.returncode == 0, stop.stdout + stop.stderr
    try:
        restore = localenv.playbook("restore.yml")
        assert restore.returncode == 0, restore.stdout[-4000:] + restore.stderr[-2000:]
        assert localenv.sql(CHECKSUM)[0] == before, "restored predictions differ from the backed-up ones"
    finally:
        localenv.supervisorctl("start", "service-1", "service-2")
    # Both instances, not just the gateway's /ready: the next tests expect every program listening.
    wait_instances_ready(localenv)


def test_testinfra_suite_passes_against_local(localenv):
    """tests/host, as an operator would run it, with this environment's inventory overrides."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(ROOT / "tests" / "host"), "--hosts=local://",
         f"--extra-vars={localenv.vars_file}", "-p", "no:cacheprovider", "-q", "-o", "addopts=", "--rootdir", str(ROOT / "tests" / "host")],
        capture_output=True, text=True, env=localenv.env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1], proc.stdout[-1500:]


def test_healthcheck_playbook_passes(localenv):
    """The operators' health check (gateway /health and /ready, pg_isready, Redis PING) on this environment."""
    run = localenv.playbook("healthcheck.yml")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


def test_down_stops_everything_and_up_keeps_the_data(localenv):
    before = _flushed(localenv)
    assert before[0] > 0
    down = subprocess.run([str(ROOT / "scripts" / "localenv.sh"), "down"], capture_output=True, text=True,
                          env=localenv.env, timeout=180)
    assert down.returncode == 0, down.stdout + down.stderr
    status = subprocess.run([str(ROOT / "scripts" / "localenv.sh"), "status"], capture_output=True, text=True,
                            env=localenv.env, timeout=60)
    assert status.returncode == 3 and "not running" in status.stdout, status.stdout
    for port in (localenv.settings["localenv_postgres_port"], localenv.settings["localenv_https_port"],
                 localenv.settings["localenv_service_base_port"]):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open after make down"

    up = localenv.up()
    assert up.returncode == 0, up.stdout[-4000:] + up.stderr[-2000:]
    assert localenv.sql(CHECKSUM)[0] == before, "predictions changed across make down / make up"
    r = localenv.session().post(f"{localenv.url}/api/v1/models/iris/predict",
                                json={"sepal_length": 5.0, "sepal_width": 3.0, "petal_length": 1.0, "petal_width": 0.1},
                                timeout=10)
    assert r.status_code == 200, r.text
    status = subprocess.run([str(ROOT / "scripts" / "localenv.sh"), "status"], capture_output=True, text=True,
                            env=localenv.env, timeout=60)
    assert status.returncode == 0 and status.stdout.count("RUNNING") == 9, status.stdout


def test_second_up_changes_nothing_and_then_is_fast(localenv):
    """`LOCALENV_FULL=1 make up` re-applies the playbook: changed=0 (idempotent). A plain `make up` right
    after it finds nothing changed and skips the playbook."""
    full = localenv.up(full=True)
    assert full.returncode == 0, full.stdout[-4000:] + full.stderr[-2000:]
    recap = full.stdout[full.stdout.rindex("PLAY RECAP"):]
    assert "changed=0" in recap and "failed=0" in recap, recap
    started = time.monotonic()
    fast = localenv.up()
    assert fast.returncode == 0 and "nothing changed" in fast.stdout, fast.stdout[-3000:]
    # Fast because the playbook did not run at all (how many seconds that is depends on the machine's load).
    assert "PLAY RECAP" not in fast.stdout and "ansible-playbook" not in fast.stdout, fast.stdout[-3000:]
    print(f"\nmake up with nothing changed: {time.monotonic() - started:.1f}s")
    assert f"X-API-Key: {localenv.api_key}" in fast.stdout


def test_status_and_ready_name_the_storage_in_use(localenv):
    """make up runs TimescaleDB when it is installed (hypertables), else the partitions fallback; both say which."""
    missing = timescaledb_missing()
    if missing and os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the local environment on TimescaleDB: {missing}")
    expected = "partitions" if missing else "timescaledb"
    ready = localenv.session().get(f"{localenv.url}/ready", timeout=10).json()
    assert ready["storage"] == expected, ready
    status = subprocess.run([str(ROOT / "scripts" / "localenv.sh"), "status"], capture_output=True, text=True,
                            env=localenv.env, timeout=60)
    assert f"storage     {expected}" in status.stdout, status.stdout
    kinds = localenv.sql("SELECT relkind FROM pg_class WHERE relname IN ('predictions', 'prediction_metrics')")
    assert {k for (k,) in kinds} == ({"p"} if missing else {"r"})
    if not missing:
        jobs = localenv.sql("SELECT count(*) FROM timescaledb_information.jobs WHERE hypertable_name IS NOT NULL")
        assert jobs == [(4,)]  # retention and compression, on both hypertables
