"""playbooks/db-tune.yml (roles/timescaledb_tuning) against a private throwaway PostgreSQL 15.

Each test takes its own server from ``postgres_factory`` because it restarts it and leaves ALTER SYSTEM
settings behind. The role restarts through ``timescaledb_tuning_restart_command``; here that is
``pg_ctl restart`` as the postgres OS user (pg_ctl reuses the server's original command line).
"""
from __future__ import annotations

import os
import pytest

PG_CTL = "/usr/lib/postgresql/15/bin/pg_ctl"


def tuning_vars(server, **overrides) -> dict:
    as_postgres = "runuser -u postgres -- " if os.geteuid() == 0 else ""
    return {
        "timescaledb_tuning_login_host": server.host,
        "timescaledb_tuning_login_port": server.port,
        "timescaledb_tuning_login_user": server.superuser,
        "timescaledb_tuning_login_password": server.superuser_password,
        # Size as a 1 GB / 2 CPU container, whatever this machine has.
        "timescaledb_tuning_memory_limit_mb": 1024,
        "timescaledb_tuning_cpu_limit": 2,
        "timescaledb_tuning_restart_command":
            f"{as_postgres}{PG_CTL} -D {server.datadir} -l {server.basedir}/restart.log -w -m fast restart",
        **overrides,
    }


def show(server, name: str) -> str:
    return server.execute(f"SHOW {name}", dbname="postgres")[0][0]


def started_at(server):
    return server.execute("SELECT pg_postmaster_start_time()", dbname="postgres")[0][0]


def auto_conf(server) -> str:
    return (server.datadir / "postgresql.auto.conf").read_text()


def ok(run):
    assert run.rc == 0, f"playbook failed: {run.failure_messages()}\n{run.stderr[-2000:]}"
    return run


@pytest.fixture
def tuned(postgres_factory, playbook):
    """A private server after one tuning run with the computed values (1 GB, 2 CPUs)."""
    server = postgres_factory()
    before = started_at(server)
    run = ok(playbook("db-tune.yml", tuning_vars(server)))
    return server, before, run


def test_computed_values_are_live_and_restart_happened(tuned):
    server, before, run = tuned
    # timescaledb-tune's rules for 1 GB and 2 CPUs.
    assert show(server, "shared_buffers") == "256MB"
    assert show(server, "effective_cache_size") == "768MB"
    assert show(server, "maintenance_work_mem") == "128MB"
    assert show(server, "max_connections") == "25"
    assert show(server, "work_mem") == "16MB"  # 1 GB * (400MB / 25) / round(2/2)
    assert show(server, "max_worker_processes") == "21"  # 3 + 16 + 2
    assert show(server, "max_parallel_workers") == "2"
    assert show(server, "max_parallel_workers_per_gather") == "1"
    assert show(server, "wal_buffers") == "16MB"
    assert show(server, "min_wal_size") == "512MB"
    assert show(server, "random_page_cost") == "1.1"
    # shared_buffers and friends are restart-only: the server was restarted, nothing is left pending.
    assert started_at(server) > before
    assert server.execute("SELECT count(*) FROM pg_settings WHERE pending_restart", dbname="postgres")[0][0] == 0
    assert run.changed > 0


def test_second_run_changes_nothing_and_does_not_restart(tuned, playbook):
    server, _, _ = tuned
    before = started_at(server)
    run = ok(playbook("db-tune.yml", tuning_vars(server)))
    assert run.changed == 0, run.stats
    assert started_at(server) == before


def test_reload_only_change_does_not_restart(tuned, playbook):
    server, _, _ = tuned
    before = started_at(server)
    run = ok(playbook("db-tune.yml", tuning_vars(server, timescaledb_tuning_work_mem="8MB")))
    assert run.changed > 0
    assert show(server, "work_mem") == "8MB"
    assert started_at(server) == before, "work_mem needs a reload, not a restart"
    assert ok(playbook("db-tune.yml", tuning_vars(server, timescaledb_tuning_work_mem="8MB"))).changed == 0


def test_restart_only_change_restarts(tuned, playbook):
    server, _, _ = tuned
    before = started_at(server)
    ok(playbook("db-tune.yml", tuning_vars(server, timescaledb_tuning_shared_buffers="300MB")))
    assert show(server, "shared_buffers") == "300MB"
    assert started_at(server) > before


def test_computed_values_within_five_percent_are_left_alone(tuned, playbook):
    server, _, _ = tuned
    # 1040 MB would give shared_buffers 260MB: within 5% of the running 256MB, so untouched.
    run = ok(playbook("db-tune.yml", tuning_vars(server, timescaledb_tuning_memory_limit_mb=1040)))
    assert run.changed == 0
    assert show(server, "shared_buffers") == "256MB"
    # 2048 MB is far off: applied.
    ok(playbook("db-tune.yml", tuning_vars(server, timescaledb_tuning_memory_limit_mb=2048)))
    assert show(server, "shared_buffers") == "512MB"


def test_check_mode_changes_nothing(tuned, playbook):
    server, _, _ = tuned
    before, conf = started_at(server), auto_conf(server)
    wanted = tuning_vars(server, timescaledb_tuning_shared_buffers="200MB", timescaledb_tuning_work_mem="4MB",
                         timescaledb_tuning_extra_settings={"log_min_duration_statement": "250ms"})
    run = ok(playbook("db-tune.yml", wanted, check=True, diff=True))
    assert run.changed > 0, "check mode should report the changes it would make"
    assert show(server, "shared_buffers") == "256MB"
    assert show(server, "work_mem") == "16MB"
    assert show(server, "log_min_duration_statement") == "-1"
    assert auto_conf(server) == conf
    assert started_at(server) == before


def test_extra_settings_and_unknown_setting_message(postgres_factory, playbook):
    server = postgres_factory()
    ok(playbook("db-tune.yml", tuning_vars(server, timescaledb_tuning_extra_settings={
        "log_min_duration_statement": "250ms", "jit": "off"})))
    assert show(server, "log_min_duration_statement") == "250ms"
    assert show(server, "jit") == "off"
    run = playbook("db-tune.yml", tuning_vars(server, timescaledb_tuning_extra_settings={"no_such_setting": "1"}))
    assert run.rc != 0
    assert any("no_such_setting" in m and "timescaledb_tuning_extra_settings" in m for m in run.failure_messages())


def test_bad_values_are_rejected_before_connecting(postgres, playbook):
    # Preflight fails before any connection: the session server is not touched.
    run = playbook("db-tune.yml", tuning_vars(postgres, timescaledb_tuning_shared_buffers="1gb",
                                              timescaledb_tuning_max_connections="lots"))
    assert run.rc != 0
    msgs = " ".join(run.failure_messages())
    assert "timescaledb_tuning_shared_buffers is '1gb'" in msgs and "256MB" in msgs, msgs
    assert "timescaledb_tuning_max_connections is 'lots'" in msgs, msgs
