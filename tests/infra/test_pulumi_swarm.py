"""The real Pulumi program over the swarm stack file (Pulumi.swarm.yaml) under mocks: the same
components as on one engine, realised as Swarm services, secrets, configs and overlay networks
(infra/runtime.py). Expected values come from the stack file."""
from __future__ import annotations

import base64
import re

import pytest
import yaml

from pulumi_graph import (CONTAINER, ROOT, NETWORK, SECRET, SERVICE, SERVICE_CONFIG, SWARM_STACKS, files_of, plain_strings,
                          run_stack, stack_file, workload)

SERVICES = ("database-container", "cache-container", "service", "service-migrate", "gateway-container",
            "monitoring-prometheus", "monitoring-grafana", "monitoring-node-exporter", "monitoring-postgres-exporter",
            "monitoring-redis-exporter")


@pytest.fixture(scope="module", params=SWARM_STACKS)
def swarm(request):
    return request.param, run_stack(request.param), stack_file(request.param)


def spec(svc) -> dict:
    return svc.get("taskSpec")["containerSpec"]


def seconds(duration: str) -> int:
    return int(duration[:-1]) * {"s": 1, "m": 60, "h": 3600}[duration[-1]]


def test_every_long_running_part_is_a_service_and_the_toolbox_a_container(swarm):
    name, graph, cfg = swarm
    prefix = cfg.get("namePrefix", f"prediction-{name}")
    assert sorted(r.name for r in graph.of_type(SERVICE)) == sorted(SERVICES)
    assert [r.name for r in graph.of_type(CONTAINER)] == ["ops-container"]
    for r in graph.of_type(SERVICE):
        labels = {x["label"]: x["value"] for x in r.get("labels")}
        # `docker stack services <prefix>` lists them, as for a `docker stack deploy`
        assert labels["com.docker.stack.namespace"] == prefix and r.get("name").startswith(prefix + "-")


def test_every_task_that_ends_is_started_again_even_with_exit_0(swarm):
    # Under "on-failure" Swarm leaves a task that exited 0 (stopped by its node's engine: SIGTERM, a
    # clean exit) unreplaced, and the service short of it for good; tests/swarm shows the restart.
    _, graph, _ = swarm
    for r in graph.of_type(SERVICE):
        assert r.get("taskSpec")["restartPolicy"]["condition"] == "any", r.name


def test_replicas_roll_start_first_one_at_a_time_and_roll_back_on_a_failed_healthcheck(swarm):
    _, graph, cfg = swarm
    svc = workload(graph, "service")
    assert svc.get("mode")["replicated"]["replicas"] == cfg["service"]["replicas"]
    update = svc.get("updateConfig")
    assert (update["order"], update["parallelism"], update["failureAction"]) == ("start-first", 1, "rollback")
    health = spec(svc)["healthcheck"]
    fail_after = seconds(health["startPeriod"]) + seconds(health["interval"]) * health["retries"]
    assert seconds(update["monitor"]) >= fail_after, "the update must watch a task long enough to see it fail"
    assert svc.get("rollbackConfig")["order"] == "start-first"
    assert svc.get("convergeConfig")["timeout"] == cfg["orchestrator"]["convergeTimeout"]
    assert svc.get("endpointSpec")["mode"] == cfg["orchestrator"]["endpointMode"]
    limits = svc.get("taskSpec")["resources"]["limits"]
    assert limits["nanoCpus"] == cfg["service"]["cpus"] * 1e9
    assert limits["memoryBytes"] == cfg["service"]["memoryMb"] * 2**20
    reserved = svc.get("taskSpec")["resources"]["reservation"]
    assert reserved["memoryBytes"] == cfg["service"]["memoryReservedMb"] * 2**20
    # Each task names itself by its slot (rows, logs), and the models come from a path on every node.
    assert spec(svc)["env"]["PREDICTION_INSTANCE"] == "{{.Service.Name}}-{{.Task.Slot}}"
    [mount] = spec(svc)["mounts"]
    assert (mount["type"], mount["source"], mount["readOnly"]) == ("bind", cfg["service"]["modelsHostPath"], True)


def test_the_database_stays_on_its_labelled_node_and_never_runs_twice(swarm):
    _, graph, cfg = swarm
    db = workload(graph, "database-container")
    label = cfg["orchestrator"]["databaseNodeLabel"]
    assert db.get("taskSpec")["placement"]["constraints"] == [f"node.labels.{label} == true"]
    assert db.get("updateConfig")["order"] == "stop-first" and db.get("mode")["replicated"]["replicas"] == 1
    [mount] = spec(db)["mounts"]
    assert (mount["type"], mount["target"]) == ("volume", "/var/lib/postgresql/data")


def test_no_secret_is_in_any_environment_only_in_files_under_run_secrets(swarm):
    _, graph, _ = swarm
    secrets = {r.get("name"): base64.b64decode(r.get("data")).decode() for r in graph.of_type(SECRET)}
    assert len(secrets) >= 8
    for r in graph.of_type(SECRET):
        assert r.inputs["data"].get("__secret__") is not None, f"{r.name}: its data must be a secret output"
    for svc in graph.of_type(SERVICE):
        env = spec(svc).get("env") or {}
        for value in env.values():
            assert not any(s in value for s in secrets.values()), f"{svc.name} has a secret in its environment"
        for ref in spec(svc).get("secrets", []):
            assert ref["fileMode"] in (0o400, 0o600) and ref["fileName"].startswith(("/run/secrets/", "/etc/nginx/tls"))
        for var, path in env.items():
            if var.endswith("_FILE"):
                assert path in {ref["fileName"] for ref in spec(svc).get("secrets", [])}, f"{svc.name}: {var}"
    # The values reach no other input as plain text either.
    for r in graph.resources:
        for text in plain_strings(r.inputs):
            assert not any(len(s) >= 16 and s in text for s in secrets.values()), f"{r.name} leaks a secret"


def test_secrets_and_configs_are_named_by_their_content(swarm):
    _, graph, _ = swarm
    for r in graph.of_type(SECRET) + graph.of_type(SERVICE_CONFIG):
        name = r.get("name")
        assert len(name) <= 64 and re.search(r"-[0-9a-f]{10}$", name), name
    nginx = files_of(graph, "gateway-container")["/etc/nginx/nginx.conf"]
    assert "upstream prediction_backend" in nginx


def test_prometheus_finds_every_task_by_dns(swarm):
    _, graph, _ = swarm
    config = yaml.safe_load(files_of(graph, "monitoring-prometheus")["/etc/prometheus/prometheus.yml"])
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    service = workload(graph, "service").get("name")
    assert jobs["prediction_service"]["dns_sd_configs"][0]["names"] == [f"tasks.{service}"]
    exporter = workload(graph, "monitoring-node-exporter")
    assert exporter.get("mode").get("global") is True
    assert jobs["node"]["dns_sd_configs"][0]["names"] == [f"tasks.{exporter.get('name')}"]
    for job, logical, port in (("postgres", "monitoring-postgres-exporter", 9187),
                               ("redis", "monitoring-redis-exporter", 9121)):
        assert jobs[job]["static_configs"][0]["targets"] == [f"{workload(graph, logical).get('name')}:{port}"]


def test_postgres_exporter_reads_its_password_from_a_secret_file(swarm):
    _, graph, _ = swarm
    exporter = spec(workload(graph, "monitoring-postgres-exporter"))
    assert exporter["env"]["DATA_SOURCE_USER"] == "prediction_monitor"
    path = exporter["env"]["DATA_SOURCE_PASS_FILE"]
    assert "DATA_SOURCE_PASS" not in exporter["env"]
    [secret] = [s for s in exporter["secrets"] if s["fileName"] == path]
    assert (secret["fileUid"], secret["fileMode"]) == ("65534", 0o400)  # the image's user nobody
    migrate = spec(workload(graph, "service-migrate"))
    assert "--monitor-role" in migrate["args"] and "PREDICTION_MONITOR_DB_PASSWORD_FILE" in migrate["env"]
    queries = files_of(graph, "monitoring-postgres-exporter")["/etc/postgres_exporter/queries.yml"]
    assert queries == (ROOT / "roles/postgres_exporter/files/queries.yml").read_text()


def test_overlay_networks_the_data_one_internal_and_the_gateway_on_the_managers(swarm):
    _, graph, cfg = swarm
    nets = {r.name: r for r in graph.of_type(NETWORK)}
    assert {n.get("driver") for n in nets.values()} == {"overlay"}
    assert all(n.get("attachable") for n in nets.values())
    assert nets["network-data"].get("internal") is cfg["network"]["dataInternal"] is True
    gw = workload(graph, "gateway-container")
    ports = {(p["targetPort"], p["publishedPort"], p["publishMode"]) for p in gw.get("endpointSpec")["ports"]}
    assert ports == {(443, cfg["gateway"]["httpsPort"], "host"), (80, cfg["gateway"]["httpPort"], "host")}
    assert gw.get("taskSpec")["placement"]["constraints"] == ["node.role == manager"]
    ops = graph.container("ops-container")
    assert ops.networks() == {nets["network-data"].get("name")}
