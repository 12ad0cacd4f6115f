"""TimescaleDB's own scheduler runs the retention and compression policies (and its job-history
job) and records them as successes: the schedule is shortened, nobody calls run_job, and the chunks
past 30 days are dropped and those past 3 days compressed.

The second test is why scripts/patches/timescaledb-2.17.2/0001-… exists: the same scenario on the
release as published (built without our patches, tests/harness/timescaledb_unpatched.py) does the
work but records every run as failed with SQLSTATE 24000 on this PostgreSQL. When a PostgreSQL or
TimescaleDB update makes that test fail, the patch is no longer needed."""
from __future__ import annotations

import os
import shutil
import tempfile
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path

import pytest

from harness.postgres import query, require_timescaledb, start_postgres
from harness.scheduled_jobs import (PORTAL_ERROR, chunks, last_run_status, run_policies_by_the_scheduler,
                                    write_rows_of_days_ago)
from harness.timescaledb_unpatched import UnavailableError, server_with_module, unpatched_tsl_module
from harness.waiting import wait_until
from prediction_service.storage import apply_migrations

pytestmark = pytest.mark.slow
TABLES = ("predictions", "prediction_metrics")
# Days ago of the rows written: past the 30-day retention, inside it, past the 3-day compression, recent.
AGES = (45, 31.05, 29, 5, 4, 1, 0)


def scheduled_run(server) -> dict:
    """Migrate, write rows of every age, let the scheduler run the four policies and TimescaleDB's
    job-history retention on a shortened schedule. Returns what a user would look at afterwards."""
    dsn, admin = server.dsn(), server.dsn(admin=True)
    apply_migrations(dsn)
    now = query(dsn, "SELECT now()")[0][0]
    write_rows_of_days_ago(partial(query, dsn), now, AGES, "iris", per_day=50)
    [(history,)] = query(admin, "SELECT job_id FROM timescaledb_information.jobs "
                                "WHERE proc_name = 'policy_job_stat_history_retention'")
    jobs = run_policies_by_the_scheduler(partial(query, admin), extra_jobs=(history,))
    assert len(jobs) == 5, jobs
    return {
        "now": now,
        "jobs": jobs,
        "status": last_run_status(partial(query, admin), jobs),
        "errors": query(admin, "SELECT job_id, sqlerrcode, err_message FROM timescaledb_information.job_errors "
                               "ORDER BY job_id"),
        "chunks": {t: chunks(partial(query, dsn), t) for t in TABLES},
    }


def assert_the_work_was_done(seen: dict) -> None:
    now: datetime = seen["now"]
    for table, state in seen["chunks"].items():
        assert all(end > now - timedelta(days=30) for end, _ in state), f"{table}: chunks past the retention remain"
        assert len(state) == 5, (table, state)  # 29, 5, 4, 1 and 0 days ago
        for end, compressed in state:
            assert compressed == (end <= now - timedelta(days=3)), (table, state)


@pytest.fixture
def scheduled_server():
    require_timescaledb()
    server = start_postgres(timescaledb=True, scheduler=True)
    yield server
    server.destroy()


def test_the_scheduler_runs_the_policies_and_records_successes(scheduled_server):
    seen = scheduled_run(scheduled_server)
    assert_the_work_was_done(seen)
    assert seen["status"] == {job: "Success" for job in seen["jobs"]}, seen["errors"]
    assert seen["errors"] == []
    # It keeps running them on the shortened schedule, still without errors.
    admin = scheduled_server.dsn(admin=True)
    wait_until(lambda: all(n >= 2 for (n,) in query(
        admin, "SELECT total_successes FROM timescaledb_information.job_stats WHERE job_id = ANY(%s)",
        (seen["jobs"],))), 60, "a second successful run of every job")
    assert query(admin, "SELECT count(*) FROM timescaledb_information.job_errors") == [(0,)]
    assert query(admin, "SELECT sum(total_failures) FROM timescaledb_information.job_stats") == [(0,)]


@pytest.fixture
def unpatched_server():
    require_timescaledb()
    try:
        module = unpatched_tsl_module()
    except UnavailableError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must show what the TimescaleDB patch fixes: {exc}", pytrace=False)
        pytest.skip(f"the unpatched TimescaleDB build cannot be had here: {exc}")
    top = Path(tempfile.mkdtemp(prefix="pg-unpatched-"))
    top.chmod(0o755)
    server = None
    try:
        server = start_postgres(timescaledb=True, scheduler=True, server_binary=server_with_module(module, top))
        yield server
    finally:
        if server is not None:
            server.destroy()
        shutil.rmtree(top, ignore_errors=True)


def test_without_the_patch_every_scheduled_run_is_recorded_as_failed(unpatched_server):
    seen = scheduled_run(unpatched_server)
    assert_the_work_was_done(seen)  # the work is committed before the failure
    assert seen["status"] == {job: "Failed" for job in seen["jobs"]}, \
        "the unpatched build succeeded: this PostgreSQL no longer refuses the portal, so the patch can go"
    assert {job for job, _, _ in seen["errors"]} == set(seen["jobs"])
    assert {(code, message) for _, code, message in seen["errors"]} == {("24000", PORTAL_ERROR)}
