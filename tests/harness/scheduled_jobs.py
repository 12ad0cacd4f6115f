"""TimescaleDB's policies run by its own scheduler, on any database the caller can send SQL to: rows of
old days written with the service's own statement, the jobs' schedule shortened to a few seconds, a
wait until the scheduler has finished a run of each. Shared by the storage tests (a private server),
the e2e tests (make up) and the Docker suite (a stack, through its ops container).

``sql(statement, params=None)`` runs one statement and returns its rows (harness.postgres.query bound
to a DSN, LocalEnv.sql, a stack's sql helper).
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Callable

from harness.waiting import wait_until
from prediction_service.storage.batch import batch_statement, encode_rows, to_record

Sql = Callable[..., list]
PORTAL_ERROR = 'cannot drop portal "" while it is being set up'


def write_rows_of_days_ago(sql: Sql, now: datetime, ages: tuple[float, ...], model: str, per_day: int = 20) -> None:
    """``per_day`` prediction rows (and their aggregates) ``age`` days before ``now``, for each age."""
    for days in ages:
        day = now - timedelta(days=days)
        encoded, _ = encode_rows([to_record({"time": day + timedelta(milliseconds=i), "model": model,
                                             "model_version": "1", "request_id": f"{model}-{days}-{i}",
                                             "input": {"x": i}, "output": "a", "latency_ms": 1.0})
                                  for i in range(per_day)])
        sql(batch_statement(encoded, "scheduler-test"))


def policy_jobs(sql: Sql) -> dict[int, str]:
    """job id -> procedure of the hypertables' policies (the migrations' retention and compression)."""
    return dict(sql("SELECT job_id, proc_name FROM timescaledb_information.jobs WHERE hypertable_name IS NOT NULL"))


def run_by_the_scheduler(sql: Sql, jobs: list[int], timeout: float = 90) -> None:
    """Shorten ``jobs``' schedule to 2 s from now and wait until the scheduler has started and finished a
    run of each since (it also ran each once when it was created)."""
    since = sql("SELECT now()")[0][0]
    for job in jobs:
        sql("SELECT alter_job(%s, schedule_interval => INTERVAL '2 seconds', next_start => now())", (job,))

    def finished():
        return sql("SELECT count(*) FROM timescaledb_information.job_stats WHERE job_id = ANY(%s) "
                   "AND last_run_started_at >= %s AND last_run_duration IS NOT NULL", (jobs, since))[0][0] == len(jobs)
    wait_until(finished, timeout, f"a finished scheduled run of jobs {jobs}")


def run_policies_by_the_scheduler(sql: Sql, extra_jobs: tuple[int, ...] = ()) -> list[int]:
    """Every policy (and ``extra_jobs``) run by the scheduler: retention first, then compression. Run together
    on old chunks that were never compressed (only backfilled data looks like that), compression would also
    pick the chunks retention is dropping and rightly report those as failed. Returns the jobs run."""
    jobs = policy_jobs(sql)
    retention = [j for j, proc in jobs.items() if proc != "policy_compression"] + list(extra_jobs)
    compression = [j for j, proc in jobs.items() if proc == "policy_compression"]
    run_by_the_scheduler(sql, retention)
    run_by_the_scheduler(sql, compression)
    return retention + compression


def last_run_status(sql: Sql, jobs: list[int]) -> dict[int, str]:
    return dict(sql("SELECT job_id, last_run_status FROM timescaledb_information.job_stats WHERE job_id = ANY(%s)",
                    (jobs,)))


def chunks(sql: Sql, table: str) -> list[tuple[datetime, bool]]:
    """(range end, compressed) of every chunk of ``table``, oldest first."""
    return sql("SELECT range_end, is_compressed FROM timescaledb_information.chunks WHERE hypertable_name = %s "
               "ORDER BY range_start", (table,))


def restore_schedules(sql: Sql, intervals: dict[int, timedelta]) -> None:
    """Put the jobs' own schedule intervals back, the next run one interval from now."""
    for job, interval in intervals.items():
        sql("SELECT alter_job(%s, schedule_interval => %s, next_start => now() + %s)", (job, interval, interval))
