"""Each stack as `pulumi up` runs it serves predictions over HTTPS through its gateway, keeps the
data layer and metrics behind it, logs every prediction into TimescaleDB hypertables, and is
scraped by its own Prometheus."""
import pytest
import requests

from harness.waiting import wait_until
from docker_support import IRIS

STACKS = ["dev", "prod"]
# Stated bound: first container created -> every container healthy (measured ~40-70 s here).
HEALTHY_BOUND_SECONDS = 120


@pytest.fixture(params=STACKS)
def stack(request, stacks):
    return stacks(request.param)


def test_every_container_is_healthy_within_the_bound(stack):
    took = stack.first_apply_seconds
    print(f"{stack.stack}: {len(stack.run.containers())} containers created and healthy in {took:.0f}s "
          f"(make stack-up {stack.up_seconds:.0f}s in all)")
    assert took <= HEALTHY_BOUND_SECONDS
    for logical, name in stack.run.containers().items():
        c = stack.docker.containers.get(name)
        # (a replica just restarted by the models roll-out reports "starting" for a few seconds;
        # the ops toolbox has no healthcheck: running is all it can be)
        wait_until(lambda: (c.reload() or c.status,
                            c.attrs["State"].get("Health", {"Status": "healthy"})["Status"]) == ("running", "healthy"),
                   60, f"{logical} running and healthy")
    # Grafana is the one container that is not run on this engine (no image can be built here).
    assert set(stack.run.not_run()) == {"monitoring-grafana"}


def test_prediction_over_https_with_the_stacks_key_and_certificate(stack):
    r = stack.predict()
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "iris" and body["predictions"] == ["setosa"]
    assert r.headers["Strict-Transport-Security"].startswith("max-age=")
    # iris v2 caches in Redis, shared by the replicas: a repeat is a hit whichever replica answers.
    url = f"{stack.url}/api/v1/models/iris/predict?version=2"
    session = stack.session()
    assert session.post(url, json=IRIS, timeout=10).status_code == 200
    wait_until(lambda: session.post(url, json=IRIS, timeout=10).json()["cached"], 10, "a shared-cache hit")


def test_no_api_key_is_401_and_metrics_are_not_served_by_the_gateway(stack):
    anonymous = stack.session(api_key=False)
    r = anonymous.post(f"{stack.url}/api/v1/models/iris/predict", json=IRIS, timeout=10)
    assert r.status_code == 401 and r.json()["error"]["code"]
    metrics = anonymous.get(f"{stack.url}/metrics", timeout=10)
    assert metrics.status_code == 404
    assert "prediction_service_requests_total" not in metrics.text


def test_plain_http_redirects_to_https(stack):
    r = requests.get(f"{stack.env['GATEWAY_HTTP_URL']}/ready", allow_redirects=False, timeout=10)
    assert r.status_code == 301 and r.headers["Location"].startswith("https://")


def test_data_layer_is_not_published_in_prod(prod):
    published = {name for (name, _port) in prod.run.published()}
    assert published == {prod.run.container("gateway-container"), prod.run.container("monitoring-prometheus")}
    ops = prod.container("ops-container")
    assert set(ops.attrs["NetworkSettings"]["Networks"]) == {f"{prod.prefix}-data"}
    network = prod.docker.networks.get(f"{prod.prefix}-data")
    assert network.attrs["Internal"] is True


def test_prometheus_scrapes_every_replica_and_counts_requests(stack):
    # Found through Docker's DNS: each replica by its address on the app network.
    replicas = stack.replica_targets()
    assert len(replicas) == len(stack.run.replicas())
    wait_until(lambda: {r["metric"]["instance"] for r in stack.promql('up{job="prediction_service"} == 1')}
               == replicas, 60, f"every replica of {stack.stack} up in Prometheus")
    for _ in range(5):
        assert stack.predict().status_code == 200
    wait_until(lambda: sum(float(r["value"][1]) for r in stack.promql(
        'prediction_service_requests_total{endpoint=~".*predict.*"}')) >= 5, 60,
        "Prometheus to count the predictions")


def test_predictions_land_in_hypertables_with_the_retention_job(stack):
    before = int(stack.scalar("SELECT count(*) FROM predictions"))
    body = {**IRIS, "petal_width": 0.25 + (before % 1000) / 10000}  # a new instance: a row is logged
    assert stack.predict(body).status_code == 200
    wait_until(lambda: int(stack.scalar("SELECT count(*) FROM predictions")) > before, 30,
               "the prediction row in TimescaleDB")
    hypertables = {row[0] for row in stack.sql("SELECT hypertable_name FROM timescaledb_information.hypertables")}
    assert {"predictions", "prediction_metrics"} <= hypertables
    jobs = {tuple(row) for row in stack.sql(
        "SELECT hypertable_name, config->>'drop_after' FROM timescaledb_information.jobs "
        "WHERE proc_name = 'policy_retention'")}
    assert ("prediction_metrics", "30 days") in jobs and ("predictions", "30 days") in jobs


def test_replicas_log_in_as_the_least_privilege_role(stack):
    assert stack.predict({**IRIS, "sepal_width": 3.21}).status_code == 200
    users = wait_until(lambda: {row[0] for row in stack.sql(
        "SELECT DISTINCT usename FROM pg_stat_activity WHERE backend_type = 'client backend' "
        "AND application_name <> 'psql' "
        "AND datname = current_database() AND pid <> pg_backend_pid()")}, 30, "the replicas' connections")
    # The replicas log in as prediction_app; the PostgreSQL exporter, beside them, as prediction_monitor.
    assert users - {"prediction_monitor"} == {"prediction_app"}, users
    assert stack.sql("SELECT rolsuper FROM pg_roles WHERE rolname = 'prediction_app'") == [["f"]]
    job = stack.container("service-migrate")
    assert job.attrs["State"]["Health"]["Status"] == "healthy" and "role prediction_app may log in" in job.logs().decode()


def test_grpc_through_the_gateway_answers_as_rest_does(stack):
    """The Open Inference Protocol over gRPC on the stack's HTTPS port (HTTP/2 by ALPN), spread over
    every replica's gRPC port by the gateway."""
    import numpy as np
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(stack.url.removeprefix("https://"), ssl=True,
                                          root_certificates=stack.cacert)
    try:
        x = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.8, 2.2]], np.float32)
        inp = triton.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer("iris", [inp], headers={"x-api-key": stack.api_key})
        rest = stack.session().post(f"{stack.url}/v2/models/iris/infer", timeout=15, json={
            "inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": x.tolist()}]}).json()
        assert result.as_numpy("label").astype(str).tolist() == rest["outputs"][0]["data"] == ["setosa", "virginica"]
        assert client.is_server_ready() and client.is_model_ready("iris")
    finally:
        client.close()


# --- the data layer watched and looking after itself (issue 20) -----------------------------------------

def test_the_data_layers_exporters_are_scraped_and_unpublished(dev):
    """The stack's Prometheus scrapes both exporters (up, and each reaching what it watches: the
    PostgreSQL one as prediction_monitor with the project's queries), and neither publishes a port."""
    for job in ("postgres", "redis"):
        wait_until(lambda: dev.promql(f'up{{job="{job}"}} == 1'), 90, f"the {job} exporter scraped and up")
    wait_until(lambda: dev.promql("pg_up == 1") and dev.promql("redis_up == 1"), 60, "pg_up and redis_up at 1")
    # Custom queries (roles/postgres_exporter/files/queries.yml): the migrations' policies are jobs.
    wait_until(lambda: dev.promql("pg_timescaledb_job_scheduled"), 60, "TimescaleDB's jobs from the queries file")
    assert dev.promql('pg_timescaledb_hypertable_chunks{hypertable="predictions"}'), "no hypertable metrics"
    exporters = {dev.run.container(x) for x in ("monitoring-postgres-exporter", "monitoring-redis-exporter")}
    assert not {name for name, _ in dev.run.published()} & exporters, "an exporter publishes a port"
    # pg_up is 1 with this login only if the migrate job gave prediction_monitor LOGIN and the password.
    env = dict(e.split("=", 1) for e in dev.container("monitoring-postgres-exporter").attrs["Config"]["Env"])
    assert env["DATA_SOURCE_USER"] == "prediction_monitor"


@pytest.fixture
def stack_db(dev):
    """``sql(statement, params=None)`` on the dev stack's database (published on loopback in dev), as the
    owner; the policies' own schedules are put back afterwards."""
    import psycopg2

    from harness.scheduled_jobs import restore_schedules

    port = dev.run.host_port("database-container", "5432/tcp")
    conn = psycopg2.connect(host="127.0.0.1", port=port, user="prediction_user", dbname="prediction_db",
                            password=dev.env["PREDICTION_DB_PASSWORD"])
    conn.autocommit = True

    def sql(statement, params=None):
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else None

    intervals = dict(sql("SELECT job_id, schedule_interval FROM timescaledb_information.jobs "
                         "WHERE hypertable_name IS NOT NULL"))
    yield sql
    restore_schedules(sql, intervals)
    conn.close()


def test_timescaledb_scheduler_runs_retention_and_compression_on_the_stacks_database(dev, stack_db):
    """The scenario of tests/harness/scheduled_jobs.py on the stack's TimescaleDB: nobody calls run_job,
    the scheduler drops the chunks past 30 days, compresses those past 3 days and records successes."""
    from datetime import timedelta

    from harness.scheduled_jobs import (chunks, last_run_status, policy_jobs, run_policies_by_the_scheduler,
                                        write_rows_of_days_ago)
    sql, model = stack_db, "docker-scheduler"
    now = sql("SELECT now()")[0][0]
    write_rows_of_days_ago(sql, now, (45, 31.05, 5, 4), model)
    jobs = policy_jobs(sql)
    assert sorted(jobs.values()) == ["policy_compression"] * 2 + ["policy_retention"] * 2

    run_policies_by_the_scheduler(sql)

    assert last_run_status(sql, list(jobs)) == {job: "Success" for job in jobs}
    # Only these jobs: another job's run cut short by an earlier test's database restart is recorded as
    # "job crash detected", which says nothing of the scheduler.
    assert sql("SELECT job_id, err_message FROM timescaledb_information.job_errors WHERE job_id = ANY(%s)",
               (list(jobs),)) == []
    state = chunks(sql, "predictions")
    assert all(end > now - timedelta(days=30) for end, _ in state), f"chunks past the 30-day retention remain: {state}"
    old = [compressed for end, compressed in state if end <= now - timedelta(days=3)]
    assert len(old) >= 2 and all(old), f"chunks past 3 days not compressed: {state}"
    assert sql("SELECT count(*) FROM predictions WHERE model = %s", (model,)) == [(40,)]  # 5 and 4 days old
    ids = "|".join(map(str, jobs))
    wait_until(lambda: len(dev.promql(f'pg_timescaledb_job_last_run_success{{job_id=~"{ids}"}} == 1')) == len(jobs),
               60, "Prometheus seeing every policy's last run succeed (through the stack's exporter)")
