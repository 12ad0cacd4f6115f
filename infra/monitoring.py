"""Prometheus scraping every replica, the Docker host's node-exporter and the data layer's PostgreSQL
and Redis exporters, and Grafana provisioned from the ops role's templates."""
from __future__ import annotations

from pathlib import Path

import pulumi
import pulumi_docker as docker

import templates
from cache import Cache
from config import REPO_ROOT, PlatformConfig
from database import MONITOR_ROLE, Database
from network import Networks
from passwords import secret_or_generated
from runtime import File, Health, Mount, Port, Workload
from service import PredictionService

ALERT_RULES_DIR = REPO_ROOT / "dashboards/alerts"
DASHBOARDS_DIR = REPO_ROOT / "dashboards/grafana"
PROMETHEUS_PORT = 9090
GRAFANA_PORT = 3000
GRAFANA_UID = 472  # the grafana/grafana image's user
NODE_EXPORTER_PORT = 9100
POSTGRES_EXPORTER_PORT = 9187  # the upstream images' defaults
REDIS_EXPORTER_PORT = 9121
POSTGRES_EXPORTER_UID = 65534  # prometheuscommunity/postgres-exporter runs as nobody: it reads the password file
POSTGRES_EXPORTER_QUERIES = "/etc/postgres_exporter/queries.yml"
# node-exporter's textfile collector folder, a volume the ops toolbox writes too: the backup playbook
# leaves the newest dump's time and size there (inventories/<stack>: db_backup_textfile_dir).
TEXTFILE_DIR = "/var/lib/node-exporter/textfile"
RULES_IN_CONTAINER = "/etc/prometheus/rules"
GRAFANA_PROVISIONING = "/etc/grafana/provisioning"
DASHBOARDS_IN_CONTAINER = "/etc/grafana/dashboards"


def alert_rule_files(folder: Path = ALERT_RULES_DIR) -> list[Path]:
    return sorted(p for p in folder.glob("*.rules.yml") if p.is_file())


def dashboard_files(folder: Path = DASHBOARDS_DIR) -> list[Path]:
    return sorted(p for p in folder.glob("*.json") if p.is_file())


def prometheus_variables(cfg: PlatformConfig, service_dns: str, port: int, rule_files: list[str],
                         node_exporter_dns: str | None = None, postgres_exporter: str | None = None,
                         redis_exporter: str | None = None) -> dict:
    """Template variables of roles/prometheus_server/templates/prometheus.yml.j2 for the container:
    the replicas and node-exporters found through Docker's DNS (every address of each name), and the
    data layer's exporters by name (one each: the name is the target, so the ``instance`` label
    outlives a replaced container)."""
    m = cfg.monitoring
    return {
        "prometheus_scrape_interval": m.scrapeInterval,
        "prometheus_evaluation_interval": m.evaluationInterval,
        "prometheus_external_labels": {"environment": cfg.stack},
        "prometheus_rule_files": rule_files,
        "prometheus_service_dns_sd": {"names": [service_dns], "port": port},
        "prometheus_node_exporter_targets": list(m.nodeExporterTargets),
        "prometheus_node_exporter_dns_sd": {"names": [node_exporter_dns], "port": NODE_EXPORTER_PORT}
        if node_exporter_dns else None,
        "prometheus_postgres_exporter_targets": [f"{postgres_exporter}:{POSTGRES_EXPORTER_PORT}"]
        if postgres_exporter else [],
        "prometheus_redis_exporter_targets": [f"{redis_exporter}:{REDIS_EXPORTER_PORT}"] if redis_exporter else [],
        "prometheus_self_target": f"localhost:{PROMETHEUS_PORT}",
        "prometheus_database_mountpoint": m.databaseMountpoint,
    }


class Monitoring(pulumi.ComponentResource):
    """Prometheus, the Docker host's node-exporter and Grafana on the app network; the PostgreSQL and
    Redis exporters on the data network (where the ops toolbox reaches the data layer from) and the
    app network (where Prometheus scrapes them), published nowhere; Prometheus and Grafana published
    on ``monitoring.bindAddress``.

    Outputs: ``prometheus_url``, ``grafana_url``, ``prometheus_yml`` (rendered), ``grafana_admin_password``
    (secret; from ``grafanaAdminPassword`` config or generated).
    """

    def __init__(self, name: str, cfg: PlatformConfig, runtime, networks: Networks, service: PredictionService,
                 database: Database, cache: Cache, opts: pulumi.ResourceOptions | None = None):
        super().__init__("prediction:monitoring:Monitoring", name, None, opts)
        self.name = name
        self.cfg = cfg
        self.runtime = runtime
        self.child_opts = pulumi.ResourceOptions(parent=self)
        # On the engine the provider talks to (the manager, on a Swarm: where the ops toolbox runs and
        # where that node's node-exporter task mounts the volume of the same name).
        self.textfile_volume_name = cfg.physical("node-textfile")
        self.textfile_volume = docker.Volume(f"{name}-node-textfile", name=self.textfile_volume_name,
                                             opts=self.child_opts)
        self.node_exporter = self._node_exporter(networks)
        self.postgres_exporter = self._postgres_exporter(networks, database, service)
        self.redis_exporter = self._redis_exporter(networks, cache)
        self.prometheus = self._prometheus(networks, service)
        self.grafana_admin_password = secret_or_generated(
            cfg.secrets.grafanaAdminPassword, f"{name}-grafana-admin-password", 24, self.child_opts)
        self.grafana = self._grafana(networks)

        # Published on all interfaces, they are reached by the gateway's host name.
        m = cfg.monitoring
        host = cfg.gateway.serverName if m.bindAddress == "0.0.0.0" else m.bindAddress
        self.prometheus_url = pulumi.Output.from_input(f"http://{host}:{m.prometheusHostPort}")
        self.grafana_url = pulumi.Output.from_input(f"http://{host}:{m.grafanaHostPort}")
        self.register_outputs({"prometheus_url": self.prometheus_url, "grafana_url": self.grafana_url,
                               "grafana_admin_password": self.grafana_admin_password})

    def _image(self, suffix: str, ref: str) -> docker.RemoteImage:
        return docker.RemoteImage(f"{self.name}-{suffix}-image", name=ref, keep_locally=True, opts=self.child_opts)

    def _node_exporter(self, networks: Networks):
        """Host metrics for the brief's CPU/memory/disk checklist: the host's /proc, /sys and root
        filesystem, read-only, seen from the host's PID namespace (one engine; a Swarm service cannot
        share the host's PID namespace); scraped over the app network. One per machine."""
        m, cfg = self.cfg.monitoring, self.cfg
        image = self._image("node-exporter", f"{m.nodeExporterImage}:{m.nodeExporterTag}")
        return self.runtime.per_node(Workload(
            name=f"{self.name}-node-exporter",
            host=cfg.physical("node-exporter"),
            component="node-exporter",
            image=image.image_id,
            command=["--path.rootfs=/host", f"--web.listen-address=:{NODE_EXPORTER_PORT}",
                     f"--collector.textfile.directory={TEXTFILE_DIR}"],
            pid_host=True,
            # No rslave propagation (node-exporter's docs suggest it to see mounts made later): it needs
            # the host's / to be a shared mount, which systemd hosts have and containers often do not.
            mounts=[Mount(target="/host", bind_root=True),
                    Mount(target=TEXTFILE_DIR, volume=self.textfile_volume, volume_name=self.textfile_volume_name,
                          read_only=True)],
            networks=[(networks.app, [])],
            health=Health(["CMD", "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{NODE_EXPORTER_PORT}/metrics"],
                          interval="5s", timeout="3s", retries=5, start_period="5s"),
            stop_grace_seconds=5,
            wait=False,
        ), pulumi.ResourceOptions(parent=self, delete_before_replace=True))

    def _postgres_exporter(self, networks: Networks, database: Database, service: PredictionService):
        """Logs in as prediction_monitor (pg_monitor only; the migrate job gives it LOGIN and its
        password, so it starts after the job) with the queries file the postgres_exporter role installs
        for make up: one copy of the TimescaleDB job and hypertable metrics."""
        m, cfg = self.cfg.monitoring, self.cfg
        image = self._image("postgres-exporter", f"{m.postgresExporterImage}:{m.postgresExporterTag}")
        # A plain host name, not the database's outputs: see service.py (a property dependency on a
        # container replaced delete-before-replace would replace this one with it).
        return self.runtime.run(Workload(
            name=f"{self.name}-postgres-exporter",
            host=cfg.physical("postgres-exporter"),
            component="postgres-exporter",
            image=image.image_id,
            command=[f"--web.listen-address=:{POSTGRES_EXPORTER_PORT}"],
            env=[f"DATA_SOURCE_URI={database.host}:{database.port}/{database.db_name}?sslmode=disable",
                 f"DATA_SOURCE_USER={MONITOR_ROLE}", f"PG_EXPORTER_EXTEND_QUERY_PATH={POSTGRES_EXPORTER_QUERIES}"],
            # DATA_SOURCE_PASS, or DATA_SOURCE_PASS_FILE on a Swarm (the exporter reads either).
            secret_env={"DATA_SOURCE_PASS": database.monitor_password},
            secret_uid=POSTGRES_EXPORTER_UID,
            files=[File(POSTGRES_EXPORTER_QUERIES, templates.POSTGRES_EXPORTER_QUERIES.read_text())],
            networks=[(networks.data, []), (networks.app, [])],
            # The landing page: /metrics would query the database at every check.
            health=Health(["CMD", "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{POSTGRES_EXPORTER_PORT}/"],
                          interval="5s", timeout="3s", retries=5, start_period="5s"),
            memory_mb=m.exporterMemoryMb,
            stop_grace_seconds=5,
            wait=False,
        ), pulumi.ResourceOptions(parent=self, delete_before_replace=True, depends_on=[service.migrate]))

    def _redis_exporter(self, networks: Networks, cache: Cache):
        """Redis's memory, evictions and hit ratio. The upstream image is FROM scratch: no shell, so no
        healthcheck command (Prometheus's up{job="redis"} watches it)."""
        m, cfg = self.cfg.monitoring, self.cfg
        image = self._image("redis-exporter", f"{m.redisExporterImage}:{m.redisExporterTag}")
        return self.runtime.run(Workload(
            name=f"{self.name}-redis-exporter",
            host=cfg.physical("redis-exporter"),
            component="redis-exporter",
            image=image.image_id,
            command=[f"-redis.addr={cache.url().rsplit('/', 1)[0]}", f"-web.listen-address=:{REDIS_EXPORTER_PORT}"],
            networks=[(networks.data, []), (networks.app, [])],
            memory_mb=m.exporterMemoryMb,
            stop_grace_seconds=5,
            wait=False,
        ), pulumi.ResourceOptions(parent=self, delete_before_replace=True))

    def _prometheus(self, networks: Networks, service: PredictionService):
        m, cfg = self.cfg.monitoring, self.cfg
        rules = alert_rule_files()
        if not rules:
            pulumi.log.warn(f"no alert rules in {ALERT_RULES_DIR}: Prometheus runs without alerts", self)
        rule_paths = [f"{RULES_IN_CONTAINER}/{p.name}" for p in rules]
        # The replicas and node-exporters by DNS: replacing or scaling them changes neither this file nor
        # Prometheus.
        self.prometheus_yml = pulumi.Output.from_input(templates.render(
            templates.PROMETHEUS_YML, **prometheus_variables(
                cfg, self.runtime.discovery_name(service.service_alias), service.port, rule_paths,
                node_exporter_dns=self.runtime.discovery_name(cfg.physical("node-exporter")),
                postgres_exporter=cfg.physical("postgres-exporter"), redis_exporter=cfg.physical("redis-exporter"))))
        image = self._image("prometheus", f"{m.prometheusImage}:{m.prometheusTag}")
        volume_name = cfg.physical("prometheus-data")
        volume = self.runtime.volume(f"{self.name}-prometheus-data", volume_name, self.child_opts)
        return self.runtime.run(Workload(
            name=f"{self.name}-prometheus",
            host=cfg.physical("prometheus"),
            component="prometheus",
            image=image.image_id,
            command=["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus",
                     f"--storage.tsdb.retention.time={m.retention}"],
            files=[File("/etc/prometheus/prometheus.yml", self.prometheus_yml)]
            + [File(path, p.read_text()) for path, p in zip(rule_paths, rules)],
            mounts=[Mount(target="/prometheus", volume=volume, volume_name=volume_name)],
            networks=[(networks.app, [])],
            ports=[Port(PROMETHEUS_PORT, m.prometheusHostPort, m.bindAddress)],
            health=Health(["CMD", "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{PROMETHEUS_PORT}/-/ready"],
                          interval="5s", timeout="3s", retries=10, start_period="10s"),
            # Prometheus writes its head block on SIGTERM; killed, it replays the WAL at the next start.
            stop_grace_seconds=30,
            wait=False,
            # Its data volume is on one node; one Prometheus at a time.
            constraints=["node.role == manager"],
            update_order="stop-first",
        ), pulumi.ResourceOptions(parent=self, delete_before_replace=True))

    def _grafana(self, networks: Networks):
        """Provisioned by files given to the container, rendered from the grafana_provisioning role's
        templates (playbooks/grafana.yml copies the same files after a dashboard change)."""
        m, cfg = self.cfg.monitoring, self.cfg
        files = grafana_files(cfg, f"http://{cfg.physical('prometheus')}:{PROMETHEUS_PORT}")
        if not dashboard_files():
            pulumi.log.warn(f"no dashboards in {DASHBOARDS_DIR}: Grafana starts without dashboards", self)
        image = self._image("grafana", f"{m.grafanaImage}:{m.grafanaTag}")
        volume_name = cfg.physical("grafana-data")
        volume = self.runtime.volume(f"{self.name}-grafana-data", volume_name, self.child_opts)
        return self.runtime.run(Workload(
            name=f"{self.name}-grafana",
            host=cfg.physical("grafana"),
            component="grafana",
            image=image.image_id,
            env=["GF_SECURITY_ADMIN_USER=admin", "GF_USERS_ALLOW_SIGN_UP=false", "GF_ANALYTICS_REPORTING_ENABLED=false",
                 "GF_ANALYTICS_CHECK_FOR_UPDATES=false"],
            # Grafana's own file convention is a double underscore: GF_SECURITY_ADMIN_PASSWORD__FILE.
            secret_env={"GF_SECURITY_ADMIN_PASSWORD": self.grafana_admin_password},
            secret_uid=GRAFANA_UID,
            secret_file_suffix="__FILE",
            files=[File(path, content) for path, content in files.items()],
            mounts=[Mount(target="/var/lib/grafana", volume=volume, volume_name=volume_name)],
            networks=[(networks.app, [])],
            ports=[Port(GRAFANA_PORT, m.grafanaHostPort, m.bindAddress)],
            health=Health(["CMD", "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{GRAFANA_PORT}/api/health"],
                          interval="10s", timeout="3s", retries=5, start_period="20s"),
            stop_grace_seconds=10,
            wait=False,
            constraints=["node.role == manager"],
            update_order="stop-first",
        ), pulumi.ResourceOptions(parent=self, delete_before_replace=True))


def grafana_files(cfg: PlatformConfig, prometheus_url: str) -> dict[str, str]:
    """Every provisioning file of the Grafana container, path -> content: the files, names and
    folder the grafana_provisioning role writes (playbooks/grafana.yml copies the same ones)."""
    m = cfg.monitoring
    role = templates.role_defaults("grafana_provisioning")
    variables = {k: role[k] for k in ("grafana_provisioning_datasource_name", "grafana_provisioning_provider_name",
                                      "grafana_provisioning_update_interval_seconds")}
    variables.update(grafana_provisioning_prometheus_url=prometheus_url,
                     grafana_provisioning_datasource_uid=m.datasourceUid,
                     grafana_provisioning_scrape_interval=m.scrapeInterval,
                     grafana_provisioning_dashboards_dir=DASHBOARDS_IN_CONTAINER)
    provider = role["grafana_provisioning_provider_name"]
    folder = role["grafana_provisioning_dashboards_folder"]
    files = {
        f"{GRAFANA_PROVISIONING}/datasources/{provider}.yml": templates.render(templates.GRAFANA_DATASOURCE, **variables),
        f"{GRAFANA_PROVISIONING}/dashboards/{provider}.yml": templates.render(templates.GRAFANA_DASHBOARDS, **variables),
    }
    dashboards = f"{DASHBOARDS_IN_CONTAINER}/{folder}" if folder else DASHBOARDS_IN_CONTAINER
    files.update({f"{dashboards}/{p.name}": p.read_text() for p in dashboard_files()})
    return files
