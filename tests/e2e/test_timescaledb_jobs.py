"""make up's TimescaleDB runs its retention and compression policies by itself and records successes:
rows of old days are written, the jobs' schedule is shortened to a few seconds, and nobody calls
run_job. Afterwards the chunks past 30 days are gone, those past 3 days compressed, job_stats says
Success with no job error, and Prometheus (through the PostgreSQL exporter) sees the same. The jobs'
own schedules are put back at the end."""
from __future__ import annotations

from datetime import timedelta

import pytest

from harness.postgres import require_timescaledb
from harness.waiting import wait_until
from prediction_service.storage.batch import batch_statement, encode_rows, to_record

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
MODEL = "e2e-scheduler"
AGES = (45, 31.05, 5, 4)  # days: past the retention twice, past the compression twice


@pytest.fixture
def timescaledb_env(localenv):
    require_timescaledb()  # skips, or fails under CI=true, naming what is missing
    return localenv


@pytest.fixture
def shortened(timescaledb_env):
    """Shortens a job's schedule to 2 s from now; puts every touched job's interval back afterwards."""
    env = timescaledb_env
    original = dict(env.sql("SELECT job_id, schedule_interval FROM timescaledb_information.jobs"))
    touched = []

    def shorten(jobs: list[int]):
        started = env.sql("SELECT now()")[0][0]
        for job in jobs:
            env.sql("SELECT alter_job(%s, schedule_interval => INTERVAL '2 seconds', next_start => now())", (job,))
            touched.append(job)
        return started

    yield shorten
    for job in touched:
        env.sql("SELECT alter_job(%s, schedule_interval => %s, next_start => now() + %s)",
                (job, original[job], original[job]))


def test_retention_and_compression_run_by_themselves_and_succeed(timescaledb_env, shortened):
    env = timescaledb_env
    now = env.sql("SELECT now()")[0][0]
    for days in AGES:
        encoded, _ = encode_rows([to_record({"time": now - timedelta(days=days, seconds=i), "model": MODEL,
                                             "model_version": "1", "request_id": f"sched-{days}-{i}",
                                             "input": {"x": i}, "output": "a", "latency_ms": 1.0})
                                  for i in range(20)])
        env.sql(batch_statement(encoded, "e2e"))
    jobs = dict(env.sql("SELECT job_id, proc_name FROM timescaledb_information.jobs WHERE hypertable_name IS NOT NULL"))
    assert sorted(jobs.values()) == ["policy_compression"] * 2 + ["policy_retention"] * 2
    # Retention first: the old chunks were never compressed, and compression would also pick the ones
    # being dropped (see tests/storage/test_timescaledb_scheduler.py).
    for proc in ("policy_retention", "policy_compression"):
        phase = [j for j, p in jobs.items() if p == proc]
        since = shortened(phase)
        wait_until(lambda: env.sql("SELECT count(*) FROM timescaledb_information.job_stats WHERE job_id = ANY(%s) "
                                   "AND last_run_started_at >= %s AND last_run_duration IS NOT NULL",
                                   (phase, since))[0][0] == len(phase), 90, f"a scheduled run of every {proc} job")

    stats = env.sql("SELECT job_id, last_run_status FROM timescaledb_information.job_stats WHERE job_id = ANY(%s)",
                    (list(jobs),))
    assert dict(stats) == {job: "Success" for job in jobs}
    assert env.sql("SELECT job_id, err_message FROM timescaledb_information.job_errors") == []
    chunks = env.sql("SELECT range_end, is_compressed FROM timescaledb_information.chunks "
                     "WHERE hypertable_name = 'predictions' ORDER BY range_start")
    assert all(end > now - timedelta(days=30) for end, _ in chunks), "chunks past the 30-day retention remain"
    old = [compressed for end, compressed in chunks if end <= now - timedelta(days=3)]
    assert len(old) >= 2 and all(old), f"chunks past 3 days not compressed: {chunks}"
    assert env.sql("SELECT count(*) FROM predictions WHERE model = %s", (MODEL,)) == [(40,)]  # 5 and 4 days old

    # What the exporter reports and the alerts read.
    ids = "|".join(map(str, jobs))
    wait_until(lambda: len(env.promql(f'pg_timescaledb_job_last_run_success{{job_id=~"{ids}"}} == 1')) == len(jobs),
               30, "Prometheus seeing every policy's last run succeed")
    assert env.promql(f'increase(pg_timescaledb_job_failures_total{{job_id=~"{ids}"}}[10m]) > 0') == []
