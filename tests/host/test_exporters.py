"""The PostgreSQL and Redis exporters of a supervised host (make up): unprivileged, on loopback only, and
each reaching what it reports on (pg_up 1, redis_up 1, TimescaleDB's jobs in the custom queries)."""
import re

import pytest

from host_expectations import run_ok

EXPORTERS = {
    # name: (program, port key, the exporter's "reaches it" metric, the role whose defaults name the OS user)
    "postgres": ("postgres-exporter", "postgres_exporter_port", "pg_up", "postgres_exporter_os_user"),
    "redis": ("redis-exporter", "redis_exporter_port", "redis_up", "redis_exporter_os_user"),
}


def _pid(host, localenv, program: str) -> int:
    status = host.run(f"{localenv['supervisorctl']} status {program}").stdout
    m = re.search(r"RUNNING\s+pid (\d+)", status)
    assert m, f"{program} is not RUNNING under supervisord: {status.strip()}"
    return int(m.group(1))


def _metrics(host, localenv, port_key: str) -> str:
    return run_ok(host, "curl -sf http://127.0.0.1:%s/metrics", str(localenv[port_key]))


@pytest.mark.parametrize("name", EXPORTERS)
def test_exporter_runs_as_its_unprivileged_user(host, localenv, expected, name):
    program, _, _, user_var = EXPORTERS[name]
    pid = _pid(host, localenv, program)
    user = run_ok(host, f"ps -o user= -p {pid}").strip()
    # The playbook ran as the user running supervisord there (make up's user).
    runner = run_ok(host, f"ps -o user= -p {run_ok(host, localenv['supervisorctl'] + ' pid').strip()}").strip()
    wanted = expected.with_facts(user_var, ansible_user_id=runner, ansible_user_uid=host.user(runner).uid)
    assert user == wanted, f"{program} runs as {user}, the inventory says {wanted}"
    if runner == "root":
        assert user != "root", f"{program} must not run as root"


@pytest.mark.parametrize("name", EXPORTERS)
def test_exporter_listens_on_loopback_only(host, localenv, name):
    program, port_key, _, _ = EXPORTERS[name]
    pid = _pid(host, localenv, program)
    listening = [line.split()[3] for line in run_ok(host, "ss -Hltnp").splitlines() if f"pid={pid}," in line]
    assert listening == [f"127.0.0.1:{localenv[port_key]}"], f"{program} listens on {listening}"


@pytest.mark.parametrize("name", EXPORTERS)
def test_exporter_reaches_what_it_reports_on(host, localenv, name):
    _, port_key, up_metric, _ = EXPORTERS[name]
    text = _metrics(host, localenv, port_key)
    assert re.search(rf"^{up_metric} 1$", text, re.M), f"{up_metric} is not 1:\n" + "\n".join(
        line for line in text.splitlines() if line.startswith(up_metric))


def _sql(host, expected, sql: str) -> str:
    return run_ok(host, "PGPASSWORD=%s psql -h %s -p %s -U %s -d %s -AtX -c %s",
                  expected["prediction_db_password"], expected["prediction_db_host"], str(expected["prediction_db_port"]),
                  expected["prediction_db_user"], expected["prediction_db_name"], sql).strip()


def test_postgres_exporter_logs_in_as_the_monitoring_role(host, localenv, expected):
    """Its session in pg_stat_activity is the monitoring role's (pg_monitor only), not the owner's."""
    user = expected["postgres_exporter_db_user"]
    assert re.fullmatch(r"[a-z_]+", user), user
    _metrics(host, localenv, "postgres_exporter_port")  # a scrape opens its connection if it has none
    assert int(_sql(host, expected, f"SELECT count(*) FROM pg_stat_activity WHERE usename = '{user}'")) >= 1, \
        f"no session of {user} in pg_stat_activity"
    member_of = _sql(host, expected, "SELECT string_agg(b.rolname, ',') FROM pg_auth_members m JOIN pg_roles r "
                                     f"ON r.oid = m.member JOIN pg_roles b ON b.oid = m.roleid WHERE r.rolname = '{user}'")
    assert member_of == "pg_monitor", f"{user} is a member of {member_of!r}, not of pg_monitor alone"


def test_postgres_exporter_reports_timescaledb_jobs_when_the_tables_are_hypertables(host, localenv, expected):
    kinds = _sql(host, expected, "SELECT relkind FROM pg_class WHERE relname = 'predictions'")
    text = _metrics(host, localenv, "postgres_exporter_port")
    if kinds == "p":
        assert "pg_timescaledb_job" not in text  # the native-partitioning fallback: no TimescaleDB, no rows
        return
    jobs = set(re.findall(r'^pg_timescaledb_job_scheduled\{[^}]*proc_name="(policy_[a-z]+)"[^}]*\} 1$', text, re.M))
    assert {"policy_retention", "policy_compression"} <= jobs, f"scheduled TimescaleDB jobs reported: {sorted(jobs)}"
