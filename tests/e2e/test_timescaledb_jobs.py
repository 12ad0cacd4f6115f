"""make up's TimescaleDB runs its retention and compression policies by itself and records successes:
rows of old days are written, the jobs' schedule is shortened to a few seconds, and nobody calls
run_job. Afterwards the chunks past 30 days are gone, those past 3 days compressed, job_stats says
Success with no job error, and Prometheus (through the PostgreSQL exporter) sees the same. The jobs'
own schedules are put back at the end."""
from __future__ import annotations

from datetime import timedelta

import pytest

from harness.postgres import require_timescaledb
from harness.scheduled_jobs import (chunks, last_run_status, policy_jobs, restore_schedules,
                                    run_policies_by_the_scheduler, write_rows_of_days_ago)
from harness.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
MODEL = "e2e-scheduler"
AGES = (45, 31.05, 5, 4)  # days: past the retention twice, past the compression twice


@pytest.fixture
def env(localenv):
    require_timescaledb()  # skips, or fails under CI=true, naming what is missing
    intervals = dict(localenv.sql("SELECT job_id, schedule_interval FROM timescaledb_information.jobs "
                                  "WHERE hypertable_name IS NOT NULL"))
    yield localenv
    restore_schedules(localenv.sql, intervals)


def test_retention_and_compression_run_by_themselves_and_succeed(env):
    now = env.sql("SELECT now()")[0][0]
    write_rows_of_days_ago(env.sql, now, AGES, MODEL)
    jobs = policy_jobs(env.sql)
    assert sorted(jobs.values()) == ["policy_compression"] * 2 + ["policy_retention"] * 2

    run_policies_by_the_scheduler(env.sql)

    assert last_run_status(env.sql, list(jobs)) == {job: "Success" for job in jobs}
    assert env.sql("SELECT job_id, err_message FROM timescaledb_information.job_errors") == []
    state = chunks(env.sql, "predictions")
    assert all(end > now - timedelta(days=30) for end, _ in state), f"chunks past the 30-day retention remain: {state}"
    old = [compressed for end, compressed in state if end <= now - timedelta(days=3)]
    assert len(old) >= 2 and all(old), f"chunks past 3 days not compressed: {state}"
    assert env.sql("SELECT count(*) FROM predictions WHERE model = %s", (MODEL,)) == [(40,)]  # 5 and 4 days old

    # What the exporter reports and the alerts read.
    ids = "|".join(map(str, jobs))
    wait_until(lambda: len(env.promql(f'pg_timescaledb_job_last_run_success{{job_id=~"{ids}"}} == 1')) == len(jobs),
               30, "Prometheus seeing every policy's last run succeed")
    assert env.promql(f'increase(pg_timescaledb_job_failures_total{{job_id=~"{ids}"}}[10m]) > 0') == []
