"""The real Pulumi program (infra/) run under mocks once per real stack file (Pulumi.<stack>.yaml) whose
workloads are containers on one Docker engine (the swarm stack: test_pulumi_swarm.py).

Each stack runs in its own interpreter (stack_runner.py) exactly as the CLI runs the program:
cwd infra/, infra/ first on sys.path, __main__.py executed, preview off so every output is known.
Expected values come from the stack files themselves plus the numbers the platform promises
(replicas 1/2/3; prod limits 1 CPU / 1024 MB), so editing a stack file changes what is checked.
"""
from __future__ import annotations

import http.server
import re
import subprocess
import sys
import threading
import urllib.parse

import pytest
import yaml

from pulumi_graph import (CONTAINER, ENGINE_STACKS, IMAGE, NETWORK, ROOT, SERVICE, STACKS, VOLUME, Graph, ProgramFailed,
                          is_secret, remote_image_id,
                          plain_strings, run_stack, stack_file)

EXPECTED_REPLICAS = {"dev": 1, "staging": 2, "prod": 3}
SERVICE_PORT = 8000
DATA_CONTAINERS = ("database-container", "cache-container")
APP_ONLY_CONTAINERS = ("gateway-container", "monitoring-prometheus", "monitoring-grafana",
                       "monitoring-node-exporter")
COMPONENT_TYPES = {
    "ops": "prediction:ops:Operations",
    "network": "prediction:network:Networks",
    "database": "prediction:database:Database",
    "cache": "prediction:cache:Cache",
    "service": "prediction:service:PredictionService",
    "gateway": "prediction:gateway:Gateway",
    "monitoring": "prediction:monitoring:Monitoring",
}


@pytest.fixture(scope="module", params=ENGINE_STACKS)
def stack(request, tmp_path_factory) -> tuple[str, Graph, dict]:
    name = request.param
    try:
        graph = run_stack(name, tmp_path_factory.mktemp(f"stack-{name}"))
    except ProgramFailed as exc:
        pytest.fail(f"infra/__main__.py failed for stack {name}:\n{exc}")
    return name, graph, stack_file(name)


def prefix(graph: Graph, cfg: dict) -> str:
    return cfg.get("namePrefix", f"prediction-{graph.stack}")


def alias(replica) -> str:
    """The stable name a replica answers on alone (its hostname and instance name)."""
    [name] = {a for n in replica.get("networksAdvanced") for a in n.get("aliases", [])
              if re.search(r"-service-\d+$", a)}
    return name


def service_alias(graph: Graph, cfg: dict) -> str:
    """The name every replica answers on (the gateway's upstream, Prometheus's DNS discovery)."""
    return f"{prefix(graph, cfg)}-service"


# --- structure --------------------------------------------------------------------------------------------

def test_logical_and_docker_names_are_unique(stack):
    _, graph, _ = stack
    keys = [(r.type, r.name) for r in graph.resources]
    assert len(keys) == len(set(keys)), f"duplicate logical names: {sorted(k for k in keys if keys.count(k) > 1)}"
    assert len(graph.urns) == len(set(graph.urns))
    for typ in (CONTAINER, NETWORK, VOLUME):
        names = [r.get("name") for r in graph.of_type(typ)]
        assert all(names), f"every {typ} gets an explicit Docker name"
        assert len(names) == len(set(names)), f"duplicate Docker names for {typ}: {names}"


def test_one_component_per_module_with_children_parented_and_prefixed(stack):
    _, graph, _ = stack
    components = {r.name: r.type for r in graph.resources if not r.custom}
    assert components == COMPONENT_TYPES
    for r in graph.resources:
        if not r.custom:
            continue
        urn = next(u for u in graph.urns if u.endswith(f"${r.type}::{r.name}"))
        parent_type = urn.split("::")[2].split("$")[0]
        owner = r.name.split("-", 1)[0]
        assert parent_type == COMPONENT_TYPES[owner], f"{r.name} should be a child of the {owner} component: {urn}"


def test_resource_counts_follow_replicas(stack):
    name, graph, cfg = stack
    replicas = cfg["service"]["replicas"]
    assert replicas == EXPECTED_REPLICAS[name], f"Pulumi.{name}.yaml should run {EXPECTED_REPLICAS[name]} replicas"
    assert len(graph.replicas()) == replicas
    # database, cache, gateway, prometheus, node-exporter, the PostgreSQL and Redis exporters, grafana, ops,
    # the migrate job + the replicas
    assert len(graph.of_type(CONTAINER)) == 10 + replicas
    assert len(graph.of_type(NETWORK)) == 2
    # one service image shared by every replica (and the migrate job), and the ops toolbox's stage of it
    assert sorted(i.get("build").get("target") or "service" for i in graph.of_type(IMAGE)) == ["ops", "service"]
    aliases = [f"{prefix(graph, cfg)}-service-{i}" for i in range(1, replicas + 1)]
    assert [alias(r) for r in graph.replicas()] == aliases
    # Each container name carries a digest of its inputs, so a changed replica is a new name and is
    # replaced create-before-delete: the option overrides pulumi-docker's delete-before-replace.
    for r, a in zip(graph.replicas(), aliases):
        assert re.fullmatch(re.escape(a) + r"-[0-9a-f]{10}", r.get("name")), r.get("name")
        assert r.options["deleteBeforeReplace"] is False
        assert r.get("hostname") == a and r.env()["PREDICTION_INSTANCE"] == a
        app = next(n for n in r.get("networksAdvanced") if n["name"].endswith("-app"))
        assert sorted(app["aliases"]) == sorted([a, service_alias(graph, cfg)])


# --- images -----------------------------------------------------------------------------------------------

def test_images_and_tags_come_from_the_stack_file(stack):
    name, graph, cfg = stack
    db, cache, gw, mon = cfg["database"], cfg["cache"], cfg["gateway"], cfg["monitoring"]
    expected = {
        "database-container": f"{db.get('image', 'timescale/timescaledb')}:{db['tag']}",
        "cache-container": f"{cache.get('image', 'redis')}:{cache['tag']}",
        "gateway-container": f"{gw.get('image', 'nginx')}:{gw['tag']}",
        "monitoring-prometheus": f"prom/prometheus:{mon['prometheusTag']}",
        "monitoring-grafana": f"grafana/grafana:{mon['grafanaTag']}",
    }
    assert expected["database-container"].startswith("timescale/timescaledb:")
    for container, ref in expected.items():
        assert graph.container(container).get("image") == remote_image_id(graph, ref), container
    if name in ("staging", "prod"):
        for container, ref in expected.items():
            tag = ref.rsplit(":", 1)[1]
            assert "latest" not in tag and re.search(r"\d+\.\d+", tag), f"{name}: {container} must be pinned, got {ref}"


def test_service_image_is_built_locally_from_the_service_dockerfile(stack):
    _, graph, _ = stack
    [image] = [i for i in graph.of_type(IMAGE) if not i.get("build").get("target")]
    build = image.get("build")
    infra = ROOT / "infra"
    assert (infra / build["context"]).resolve() == ROOT / "service"
    assert (infra / build["dockerfile"]).resolve() == ROOT / "service/Dockerfile"
    assert image.get("skipPush") is True
    for replica in graph.replicas():
        # repo_digest changes on every rebuild (the image id, for an image not pushed); image_name would not.
        assert replica.get("image") == image.outputs["repoDigest"] and replica.get("image").startswith("sha256:")


# --- runtime settings -------------------------------------------------------------------------------------

def test_restart_policies(stack):
    _, graph, _ = stack
    for replica in graph.replicas():
        assert replica.get("restart") == "on-failure"
        # SIGTERM → in-flight requests (5 s + 1 s) → writer flush (≤ 30 s) must fit before SIGKILL, in a
        # `docker stop` (stopTimeout) and in Pulumi's delete (destroyGraceSeconds; 0 = SIGKILL at once).
        assert replica.get("stopTimeout") >= 36 and replica.get("destroyGraceSeconds") >= 36
    for name in DATA_CONTAINERS + APP_ONLY_CONTAINERS:
        assert graph.container(name).get("restart") == "unless-stopped", name


def test_replica_limits_follow_the_stack_file(stack):
    name, graph, cfg = stack
    svc = cfg["service"]
    if name == "prod":
        assert float(svc["cpus"]) == 1 and svc["memoryMb"] == 1024, "prod replicas: 1 CPU, 1 GiB (the brief)"
    for replica in graph.replicas():
        if "cpus" in svc:
            assert float(replica.get("cpus")) == float(svc["cpus"])
        else:
            assert replica.get("cpus") is None
        assert replica.get("memory") == svc.get("memoryMb")


def test_healthchecks(stack):
    _, graph, cfg = stack
    db = graph.container("database-container").get("healthcheck")
    assert "pg_isready" in " ".join(db["tests"]) and "prediction_user" in " ".join(db["tests"])
    assert graph.container("cache-container").get("healthcheck")["tests"][-1] == "ping"
    for replica in graph.replicas():
        probe = replica.get("healthcheck")["tests"]
        assert probe[:2] == ["CMD", "python"] and f"('127.0.0.1', {SERVICE_PORT})" in probe[-1] and "/health" in probe[-1]
        assert replica.get("wait") is True, "pulumi up waits for healthy replicas before the gateway"


class _Status(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(200 if self.path == "/health" and self.server.healthy else 503)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("healthy", [True, False, None], ids=["answers-200", "answers-503", "nothing-listening"])
def test_the_replicas_healthcheck_passes_only_on_200_from_health(stack, healthy):
    """The replicas' healthcheck command as the program emits it, run with this Python against a server
    that answers GET /health with 200 or 503, or against a closed port: exit 0 only for the 200."""
    _, graph, _ = stack
    code = graph.replicas()[0].get("healthcheck")["tests"][-1]
    server = http.server.HTTPServer(("127.0.0.1", 0), _Status)
    server.healthy = healthy
    port = server.server_address[1]
    if healthy is None:
        server.server_close()
    else:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        probe = code.replace(f"('127.0.0.1', {SERVICE_PORT})", f"('127.0.0.1', {port})")
        done = subprocess.run([sys.executable, "-I", "-S", "-c", probe], capture_output=True, timeout=10)
        assert (done.returncode == 0) is bool(healthy), done.stderr.decode()[-300:]
    finally:
        if healthy is not None:
            server.shutdown()
            server.server_close()


# --- ports and networks -----------------------------------------------------------------------------------

def test_ports_published_only_where_intended(stack):
    name, graph, cfg = stack
    gw = graph.container("gateway-container")
    assert {(p["internal"], p["external"]) for p in gw.ports()} == {
        (443, cfg["gateway"]["httpsPort"]), (80, cfg["gateway"]["httpPort"])}
    if name == "prod":
        assert cfg["gateway"]["httpsPort"] == 443 and cfg["gateway"]["httpPort"] == 80
    for replica in graph.replicas():
        assert replica.ports() == [], "replicas are reached through the gateway only"
    for container, section in (("database-container", "database"), ("cache-container", "cache")):
        ports = graph.container(container).ports()
        host_port = cfg[section].get("hostPort")
        if name in ("staging", "prod"):
            assert host_port is None and ports == [], f"{name}: {container} must not be published"
        elif host_port is None:
            assert ports == []
        else:
            assert [(p["external"], p["ip"]) for p in ports] == [(host_port, "127.0.0.1")], \
                "dev data ports are for local tools only: loopback"
    for container in ("monitoring-prometheus", "monitoring-grafana"):
        assert {p["ip"] for p in graph.container(container).ports()} == {cfg["monitoring"].get("bindAddress", "127.0.0.1")}


def test_networks_per_container(stack):
    name, graph, cfg = stack
    p = prefix(graph, cfg)
    app, data = f"{p}-app", f"{p}-data"
    nets = {r.get("name"): r for r in graph.of_type(NETWORK)}
    assert set(nets) == {app, data}
    assert nets[app].get("internal") is False
    assert nets[data].get("internal") is cfg["network"]["dataInternal"]
    if name in ("staging", "prod"):
        assert nets[data].get("internal") is True, f"{name}: the data network must be internal"
    for container in DATA_CONTAINERS:
        assert graph.container(container).networks() == {data}, f"{container}: data layer only on the data network"
    for replica in graph.replicas():
        assert replica.networks() == {app, data}
    for container in APP_ONLY_CONTAINERS:
        assert graph.container(container).networks() == {app}, f"{container} must not reach the data layer"


# --- data layer -------------------------------------------------------------------------------------------

def test_database_container(stack):
    _, graph, cfg = stack
    db = graph.container("database-container")
    command = db.get("command")
    # Nothing beyond listen_addresses: a `-c` flag would override db-tune.yml's ALTER SYSTEM.
    assert command == ["postgres", "-c", "listen_addresses=*"]
    env = db.env()
    assert env["POSTGRES_USER"] == "prediction_user" and env["POSTGRES_DB"] == "prediction_db"
    assert env["TIMESCALEDB_TELEMETRY"] == "off"
    assert env["POSTGRES_PASSWORD"]
    volume = graph.one(VOLUME, "database-data").get("name")
    assert db.get("volumes") == [{"volumeName": volume, "containerPath": "/var/lib/postgresql/data"}]
    # The schema comes from the migrate job (below), on every deploy, not from init scripts that
    # would only run on an empty data volume.
    assert not db.get("uploads")


def test_migrate_job_runs_the_images_migrations_as_the_owner_before_the_replicas(stack):
    _, graph, _ = stack
    db = graph.container("database-container")
    job = graph.container("service-migrate")
    assert job.get("command") == ["python", "-m", "prediction_service", "migrate", "--app-role", "prediction_app",
                                  "--monitor-role", "prediction_monitor", "--stay-up"]
    # pulumi up waits until it reports the database migrated; a job that never does fails its create,
    # and replaceOnChanges ["*"] makes the next pulumi up replace (re-run) it.
    assert job.get("wait") is True and "/tmp/migrated" in job.get("healthcheck")["tests"]
    assert job.options["replaceOnChanges"] == ["*"] and job.options["deleteBeforeReplace"] is True
    assert job.get("image") == graph.replicas()[0].get("image")  # the same build as the replicas
    assert job.networks() == {graph.one(NETWORK, "network-data").get("name")}
    url = urllib.parse.urlsplit(job.env()["PREDICTION_TIMESCALE_URL"])
    assert (url.username, urllib.parse.unquote(url.password)) == ("prediction_user", db.env()["POSTGRES_PASSWORD"])
    # The replicas start after it (dependsOn), and after the database and Redis, without taking any
    # of their outputs: a delete-before-replace of those would otherwise delete every replica first.
    for replica in graph.replicas():
        depends = set(replica.options["dependsOn"])
        assert {db.urn, job.urn, graph.container("cache-container").urn} <= depends
        from_them = {u for urns in replica.options["propertyDependencies"].values() for u in urns}
        assert not from_them & {db.urn, job.urn, graph.container("cache-container").urn}


def test_cache_container(stack):
    _, graph, cfg = stack
    c = cfg["cache"]
    command = graph.container("cache-container").get("command")
    flags = dict(zip(command[1::2], command[2::2]))
    assert command[0] == "redis-server"
    assert flags["--maxmemory"] == c["maxmemory"]
    assert flags["--maxmemory-policy"] == c.get("maxmemoryPolicy", "allkeys-lru") == "allkeys-lru"
    assert flags["--timeout"] == str(c.get("timeout", 300)) == "300"
    assert flags["--tcp-keepalive"] == str(c.get("tcpKeepalive", 60)) == "60"
    volume = graph.one(VOLUME, "cache-data").get("name")
    assert graph.container("cache-container").get("volumes") == [{"volumeName": volume, "containerPath": "/data"}]


# --- service wiring ---------------------------------------------------------------------------------------

def test_service_env_points_at_database_and_cache_containers(stack):
    _, graph, cfg = stack
    db = graph.container("database-container")
    cache = graph.container("cache-container")
    app_password = graph.container("service-migrate").env()["PREDICTION_APP_DB_PASSWORD"]
    for replica in graph.replicas():
        env = replica.env()
        url = urllib.parse.urlsplit(env["PREDICTION_TIMESCALE_URL"])
        assert url.scheme == "postgresql"
        assert url.hostname == db.get("name") and url.port == 5432
        # The least-privilege role of migration 0005, not the database's superuser.
        assert url.username == "prediction_app" and url.path == f"/{db.env()['POSTGRES_DB']}"
        assert urllib.parse.unquote(url.password) == app_password != db.env()["POSTGRES_PASSWORD"]
        redis = urllib.parse.urlsplit(env["PREDICTION_REDIS_URL"])
        assert (redis.scheme, redis.hostname, redis.port, redis.path) == ("redis", cache.get("name"), 6379, "/0")
        assert env["PREDICTION_INSTANCE"] == alias(replica)
        assert env["PREDICTION_PORT"] == str(SERVICE_PORT)
        assert env["PREDICTION_API_KEY"] and env["PREDICTION_JWT_SECRET"]
        assert env["PREDICTION_MODEL_PATH"] in [v["containerPath"] for v in replica.get("volumes")]
        assert all(k.startswith("PREDICTION_") for k in env)


# --- gateway ----------------------------------------------------------------------------------------------

def nginx_conf(graph: Graph) -> str:
    return graph.container("gateway-container").upload("/etc/nginx/nginx.conf")


def test_nginx_upstream_is_every_replica_by_one_name(stack):
    _, graph, cfg = stack
    conf = nginx_conf(graph)
    upstream = re.search(r"upstream prediction_backend \{(.*?)\}", conf, re.S).group(1)
    # One name that resolves to every replica: scaling or replacing replicas leaves the gateway alone.
    replicas = [f"{service_alias(graph, cfg)}:{SERVICE_PORT}"]
    # Each replica once as a primary and once as a never-failed backup (the fallback when every
    # primary is counted failed).
    servers = [(s, params.split()) for s, params in re.findall(r"^\s*server\s+(\S+)([^;]*);", upstream, re.M)]
    assert [s for s, params in servers if "backup" not in params] == replicas
    assert [s for s, params in servers if "backup" in params] == replicas
    assert all("max_fails=0" in params for _, params in servers if "backup" in params)
    # Re-resolved through Docker's DNS, so a replaced replica (new container, new address) is followed.
    assert re.search(r"^\s*resolver 127\.0\.0\.11 ", conf, re.M) and "resolve;" in upstream
    assert re.search(r"^\s*keepalive \d+;", upstream, re.M)


def test_nginx_tls_redirect_and_locations(stack):
    _, graph, cfg = stack
    conf = nginx_conf(graph)
    assert re.findall(r"ssl_protocols ([^;]+);", conf) == ["TLSv1.2 TLSv1.3"]
    port = cfg["gateway"]["httpsPort"]
    suffix = "" if port == 443 else f":{port}"
    assert f"return 301 https://$host{suffix}$request_uri;" in conf
    assert re.search(r"listen 80;", conf) and re.search(r"listen 443 ssl;", conf)
    assert "location /api/ {\n            proxy_pass http://prediction_backend;" in conf
    assert re.search(r"location \^~ /metrics \{\s*return 404", conf)
    # /metrics is proxied nowhere: the only proxy_pass locations are /api/, /health, /ready, the
    # Open Inference Protocol's /v2, and the further passes that only a proxied request's 502 reaches.
    proxied = re.findall(r"location ([^{]+?) \{\s*proxy_pass", conf)
    assert proxied == ["/api/", "= /health", "= /ready", "= /v2", "/v2/", "@upstream_retry", "@upstream_retry_last"]
    assert re.findall(r"error_page ([^;]*)@upstream_retry;", conf) == ["502 = "]
    assert re.findall(r"error_page ([^;]*)@upstream_retry_last;", conf) == ["502 = "]
    assert "proxy_http_version 1.1;" in conf and 'proxy_set_header Connection "";' in conf
    assert re.search(r"proxy_next_upstream error timeout non_idempotent;", conf)
    gw = graph.container("gateway-container")
    assert gw.upload("/etc/nginx/tls/server.crt").startswith("-----BEGIN CERTIFICATE-----")


# --- monitoring -------------------------------------------------------------------------------------------

def test_prometheus_discovers_every_replica_and_loads_the_rules(stack):
    name, graph, cfg = stack
    prom = graph.container("monitoring-prometheus")
    config = yaml.safe_load(prom.upload("/etc/prometheus/prometheus.yml"))
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "prediction_service")
    assert job.get("metrics_path", "/metrics") == "/metrics"
    [sd] = job["dns_sd_configs"]
    assert (sd["names"], sd["type"], sd["port"]) == ([service_alias(graph, cfg)], "A", SERVICE_PORT)
    node = next(j for j in config["scrape_configs"] if j["job_name"] == "node")
    [sd] = node["dns_sd_configs"]
    assert (sd["names"], sd["port"]) == ([graph.container("monitoring-node-exporter").get("name")], 9100)
    assert config["global"]["external_labels"] == {"environment": name}
    rules = sorted((ROOT / "dashboards/alerts").glob("*.rules.yml"))
    assert config["rule_files"] == [f"/etc/prometheus/rules/{r.name}" for r in rules]
    for rule in rules:
        assert prom.upload(f"/etc/prometheus/rules/{rule.name}") == rule.read_text()


def test_prometheus_scrapes_the_data_layers_exporters(stack):
    _, graph, _ = stack
    config = yaml.safe_load(graph.container("monitoring-prometheus").upload("/etc/prometheus/prometheus.yml"))
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    for job, logical, port in (("postgres", "monitoring-postgres-exporter", 9187),
                               ("redis", "monitoring-redis-exporter", 9121)):
        [static] = jobs[job]["static_configs"]
        assert static["targets"] == [f"{graph.container(logical).get('name')}:{port}"], job
    # The database disk alert's series: the host filesystem holding Docker's volumes, found by DNS too.
    [relabel] = jobs["node"]["metric_relabel_configs"]
    assert (relabel["regex"], relabel["target_label"], relabel["replacement"]) == (
        "node_filesystem_[a-z_]+;/", "volume", "database")


def test_exporters_reach_the_data_layer_unpublished(stack):
    """On the data network like the ops toolbox (never a published port), on the app network for
    Prometheus; the PostgreSQL one as prediction_monitor with the migrate job's password for it and
    the postgres_exporter role's queries file (one copy)."""
    _, graph, cfg = stack
    nets = {graph.one(NETWORK, "network-data").get("name"), graph.one(NETWORK, "network-app").get("name")}
    db = graph.container("database-container")
    job = graph.container("service-migrate")
    pg = graph.container("monitoring-postgres-exporter")
    redis = graph.container("monitoring-redis-exporter")
    for exporter in (pg, redis):
        assert exporter.networks() == nets and not exporter.ports(), exporter.name
    env = pg.env()
    assert env["DATA_SOURCE_URI"] == f"{db.get('name')}:5432/{cfg['database'].get('name', 'prediction_db')}?sslmode=disable"
    assert env["DATA_SOURCE_USER"] == "prediction_monitor"
    assert env["DATA_SOURCE_PASS"] == job.env()["PREDICTION_MONITOR_DB_PASSWORD"]
    assert is_secret(pg.inputs["envs"]), "the exporter's password must stay a secret"
    assert env["PG_EXPORTER_EXTEND_QUERY_PATH"] == "/etc/postgres_exporter/queries.yml"
    assert pg.upload("/etc/postgres_exporter/queries.yml") == (ROOT / "roles/postgres_exporter/files/queries.yml").read_text()
    assert job.urn in pg.options["dependsOn"], "the role may log in only once the migrate job has run"
    assert pg.get("image") == remote_image_id(graph, "prometheuscommunity/postgres-exporter:v0.11.1")
    assert redis.get("image") == remote_image_id(graph, "oliver006/redis_exporter:v1.45.0")
    assert f"-redis.addr=redis://{graph.container('cache-container').get('name')}:{cfg['cache'].get('port', 6379)}" \
        in redis.get("command")


def test_backup_metrics_reach_node_exporters_textfile_collector(stack):
    """The backup playbook (in the ops toolbox) writes the newest dump's metrics where node-exporter reads
    them: one volume, read-write in ops, read-only in node-exporter (inventories' db_backup_textfile_dir)."""
    name, graph, _ = stack
    inventory = yaml.safe_load((ROOT / f"inventories/{name}/group_vars/all/database.yml").read_text())
    folder = inventory["db_backup_textfile_dir"]
    volume = graph.one(VOLUME, "monitoring-node-textfile").get("name")
    exporter = graph.container("monitoring-node-exporter")
    assert f"--collector.textfile.directory={folder}" in exporter.get("command")
    mounted = {(c.name, v["containerPath"], v.get("readOnly", False)) for c in (exporter, graph.container("ops-container"))
               for v in c.get("volumes") or [] if v.get("volumeName") == volume}
    assert mounted == {("monitoring-node-exporter", folder, True), ("ops-container", folder, False)}


def test_grafana_provisioning_from_the_ops_templates(stack):
    _, graph, _ = stack
    grafana = graph.container("monitoring-grafana")
    datasource = yaml.safe_load(grafana.upload("/etc/grafana/provisioning/datasources/prediction-service.yml"))
    ds = datasource["datasources"][0]
    assert ds["type"] == "prometheus"
    assert ds["url"] == f"http://{graph.container('monitoring-prometheus').get('name')}:9090"
    providers = yaml.safe_load(grafana.upload("/etc/grafana/provisioning/dashboards/prediction-service.yml"))["providers"]
    assert providers[0]["options"]["path"] == "/etc/grafana/dashboards"
    assert providers[0]["options"]["foldersFromFilesStructure"] is True
    # The role's folder and file names (playbooks/grafana.yml writes the very same files).
    for dashboard in sorted((ROOT / "dashboards/grafana").glob("*.json")):
        assert grafana.upload(f"/etc/grafana/dashboards/Prediction Service/{dashboard.name}") == dashboard.read_text()


# --- secrets ----------------------------------------------------------------------------------------------

SECRET_ENV = {
    "database-container": ["POSTGRES_PASSWORD"],
    "monitoring-grafana": ["GF_SECURITY_ADMIN_PASSWORD"],
    "service-migrate": ["PREDICTION_APP_DB_PASSWORD"],
}
SERVICE_SECRET_ENV = ["PREDICTION_TIMESCALE_URL", "PREDICTION_API_KEY", "PREDICTION_JWT_SECRET"]


def secret_values(graph: Graph) -> set[str]:
    values = set()
    for name, keys in SECRET_ENV.items():
        values |= {graph.container(name).env()[k] for k in keys}
    for replica in graph.replicas():
        env = replica.env()
        values |= {env["PREDICTION_API_KEY"], env["PREDICTION_JWT_SECRET"],
                   urllib.parse.unquote(urllib.parse.urlsplit(env["PREDICTION_TIMESCALE_URL"]).password)}
    values.add(graph.container("gateway-container").upload("/etc/nginx/tls/server.key"))
    return values


def test_every_password_key_and_jwt_secret_is_a_secret_output(stack):
    _, graph, _ = stack
    for name in list(SECRET_ENV) + [r.name for r in graph.replicas()]:
        assert is_secret(graph.container(name).inputs["envs"]), f"{name}: envs hold a secret and must be secret"
    assert is_secret(graph.container("gateway-container").inputs["uploads"]), "the TLS private key upload"
    for export in ("api_key", "grafana_admin_password"):
        assert graph.exports[export]["secret"] is True
    # No secret value may reach the engine anywhere as plain text (inputs of any resource, exports).
    secrets = secret_values(graph)
    assert all(len(s) >= 16 for s in secrets), secrets
    for r in graph.resources:
        for text in plain_strings(r.inputs):
            leaked = [s for s in secrets if s in text]
            assert not leaked, f"{r.type} {r.name} has a secret in a non-secret input"
    for name, export in graph.exports.items():
        if not export["secret"]:
            assert not [s for s in secrets for t in plain_strings(export["value"]) if s in t], name


def _secret_like(key: str) -> bool:
    return re.search(r"password|passwd|secret|token|credential|private|(key|cert)$", key, re.I) is not None


def test_stack_files_hold_no_plain_text_secrets():
    def walk(node, path):
        if isinstance(node, dict):
            if set(node) == {"secure"}:
                return
            for k, v in node.items():
                if _secret_like(str(k)) and not (isinstance(v, dict) and set(v) == {"secure"}):
                    raise AssertionError(f"{path}.{k} looks like a secret but is not `secure:`")
                walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")

    files = sorted(ROOT.glob("Pulumi.*.yaml"))
    assert {f.name for f in files} >= {f"Pulumi.{s}.yaml" for s in STACKS}
    for f in files:
        walk(yaml.safe_load(f.read_text()), f.name)
    assert _secret_like("prediction-platform:dbPassword") and _secret_like("prediction-platform:tlsKey")
    assert not _secret_like("tcpKeepalive") and not _secret_like("upstreamKeepalive")


# --- outputs ----------------------------------------------------------------------------------------------

def test_stack_outputs(stack):
    _, graph, cfg = stack
    port = cfg["gateway"]["httpsPort"]
    url = graph.exports["url"]["value"]
    assert url == f"https://{cfg['gateway']['serverName']}{'' if port == 443 else f':{port}'}/"
    assert graph.exports["replica_names"]["value"] == [alias(r) for r in graph.replicas()]
    for r in graph.replicas():
        assert graph.by_urn(r.urn) is r
    assert graph.exports["ops_container"]["value"] == graph.container("ops-container").get("name")
    mon = cfg["monitoring"]
    assert graph.exports["prometheus_url"]["value"].endswith(f":{mon.get('prometheusHostPort', 9090)}")
    assert graph.exports["grafana_url"]["value"].endswith(f":{mon.get('grafanaHostPort', 3000)}")


def test_generated_secrets_when_none_are_configured(stack):
    _, graph, _ = stack
    generated = {r.name for r in graph.of_type("random:index/randomPassword:RandomPassword")}
    assert generated == {"database-password", "database-app-password", "database-monitor-password", "service-api-key",
                         "service-jwt-secret", "monitoring-grafana-admin-password"}
    assert {r.type for r in graph.resources if r.type.startswith("tls:")} == {
        "tls:index/privateKey:PrivateKey", "tls:index/selfSignedCert:SelfSignedCert"}


def test_models_are_mounted_read_only_from_the_configured_source(stack):
    _, graph, cfg = stack
    host_path = cfg["service"].get("modelsHostPath")
    for replica in graph.replicas():
        [mount] = [v for v in replica.get("volumes") if v["containerPath"] == replica.env()["PREDICTION_MODEL_PATH"]]
        assert mount["readOnly"] is True
        if host_path is None:
            assert mount["volumeName"] == graph.one(VOLUME, "service-models").get("name")
        else:
            assert mount["hostPath"] == str(ROOT / host_path)


# --- one Docker host for every stack ---------------------------------------------------------------------

def test_no_two_stacks_publish_the_same_host_address():
    """dev, staging and prod may share one Docker host (every name is prefixed per stack): then no
    two of them may publish the same port on overlapping addresses (0.0.0.0 overlaps every address)."""
    published: dict[int, list[tuple[str, str, str]]] = {}
    for name in STACKS:
        graph = run_stack(name)
        for c in graph.of_type(CONTAINER):
            for p in c.ports():
                published.setdefault(int(p["external"]), []).append((name, c.name, p.get("ip", "0.0.0.0")))
        for svc in graph.of_type(SERVICE):  # host-mode ports of a Swarm service: every address of its node
            for p in (svc.get("endpointSpec") or {}).get("ports", []):
                published.setdefault(int(p["publishedPort"]), []).append((name, svc.name, "0.0.0.0"))
    for port, users in sorted(published.items()):
        for i, (stack_a, container_a, ip_a) in enumerate(users):
            for stack_b, container_b, ip_b in users[i + 1:]:
                overlap = ip_a == ip_b or "0.0.0.0" in (ip_a, ip_b)
                assert not overlap, (f"{stack_a} {container_a} and {stack_b} {container_b} both publish "
                                     f"{ip_a}:{port} / {ip_b}:{port}")


def test_every_container_stops_with_a_grace_period_when_pulumi_deletes_it(stack):
    """pulumi-docker stops a container it deletes with destroy_grace_seconds, 0 when unset: SIGKILL
    at once. Every container says how long it needs."""
    _, graph, _ = stack
    for c in graph.of_type(CONTAINER):
        assert c.get("destroyGraceSeconds", 0) > 0, f"{c.name} would be killed at once by a pulumi delete"
