"""Prometheus scraping every replica and the Docker host's node-exporter, and Grafana provisioned
from the ops role's templates."""
from __future__ import annotations

from pathlib import Path

import pulumi
import pulumi_docker as docker

import templates
from config import REPO_ROOT, PlatformConfig
from network import Networks
from passwords import secret_or_generated
from service import PredictionService

ALERT_RULES_DIR = REPO_ROOT / "dashboards/alerts"
DASHBOARDS_DIR = REPO_ROOT / "dashboards/grafana"
PROMETHEUS_PORT = 9090
GRAFANA_PORT = 3000
NODE_EXPORTER_PORT = 9100
RULES_IN_CONTAINER = "/etc/prometheus/rules"
GRAFANA_PROVISIONING = "/etc/grafana/provisioning"
DASHBOARDS_IN_CONTAINER = "/etc/grafana/dashboards"


def alert_rule_files(folder: Path = ALERT_RULES_DIR) -> list[Path]:
    return sorted(p for p in folder.glob("*.rules.yml") if p.is_file())


def dashboard_files(folder: Path = DASHBOARDS_DIR) -> list[Path]:
    return sorted(p for p in folder.glob("*.json") if p.is_file())


def prometheus_variables(cfg: PlatformConfig, service_alias: str, port: int,
                         rule_files: list[str], node_exporters: list[str] = ()) -> dict:
    """Template variables of roles/prometheus_server/templates/prometheus.yml.j2 for the container:
    the replicas found through Docker's DNS (every address of the service alias)."""
    m = cfg.monitoring
    return {
        "prometheus_scrape_interval": m.scrapeInterval,
        "prometheus_evaluation_interval": m.evaluationInterval,
        "prometheus_external_labels": {"environment": cfg.stack},
        "prometheus_rule_files": rule_files,
        "prometheus_service_dns_sd": {"names": [service_alias], "port": port},
        "prometheus_node_exporter_targets": list(node_exporters) + list(m.nodeExporterTargets),
        "prometheus_self_target": f"localhost:{PROMETHEUS_PORT}",
    }


def _labels(cfg: PlatformConfig, component: str) -> list[docker.ContainerLabelArgs]:
    return [docker.ContainerLabelArgs(label="com.prediction.stack", value=cfg.stack),
            docker.ContainerLabelArgs(label="com.prediction.component", value=component)]


class Monitoring(pulumi.ComponentResource):
    """Prometheus, the Docker host's node-exporter and Grafana on the app network; Prometheus and
    Grafana published on ``monitoring.bindAddress``.

    Outputs: ``prometheus_url``, ``grafana_url``, ``prometheus_yml`` (rendered), ``grafana_admin_password``
    (secret; from ``grafanaAdminPassword`` config or generated).
    """

    def __init__(self, name: str, cfg: PlatformConfig, networks: Networks, service: PredictionService,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("prediction:monitoring:Monitoring", name, None, opts)
        self.name = name
        self.cfg = cfg
        self.child_opts = pulumi.ResourceOptions(parent=self)
        self.node_exporter = self._node_exporter(networks)
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

    def _node_exporter(self, networks: Networks) -> docker.Container:
        """Host metrics for the brief's CPU/memory/disk checklist: the host's /proc, /sys and root
        filesystem, read-only, seen from the host's PID namespace; scraped over the app network."""
        m, cfg = self.cfg.monitoring, self.cfg
        image = self._image("node-exporter", f"{m.nodeExporterImage}:{m.nodeExporterTag}")
        return docker.Container(
            f"{self.name}-node-exporter",
            name=cfg.physical("node-exporter"),
            image=image.image_id,
            command=["--path.rootfs=/host", f"--web.listen-address=:{NODE_EXPORTER_PORT}"],
            pid_mode="host",
            # No rslave propagation (node-exporter's docs suggest it to see mounts made later): it needs
            # the host's / to be a shared mount, which systemd hosts have and containers often do not.
            mounts=[docker.ContainerMountArgs(type="bind", source="/", target="/host", read_only=True)],
            networks_advanced=[docker.ContainerNetworksAdvancedArgs(name=networks.app.name)],
            healthcheck=docker.ContainerHealthcheckArgs(
                tests=["CMD", "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{NODE_EXPORTER_PORT}/metrics"],
                interval="10s", timeout="3s", retries=5, start_period="5s"),
            restart="unless-stopped",
            destroy_grace_seconds=5,
            labels=_labels(cfg, "node-exporter"),
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
        )

    def _prometheus(self, networks: Networks, service: PredictionService) -> docker.Container:
        m, cfg = self.cfg.monitoring, self.cfg
        rules = alert_rule_files()
        if not rules:
            pulumi.log.warn(f"no alert rules in {ALERT_RULES_DIR}: Prometheus runs without alerts", self)
        rule_paths = [f"{RULES_IN_CONTAINER}/{p.name}" for p in rules]
        # The replicas by DNS: replacing or scaling them changes neither this file nor the container.
        self.prometheus_yml = pulumi.Output.from_input(templates.render(
            templates.PROMETHEUS_YML, **prometheus_variables(
                cfg, service.service_alias, service.port, rule_paths,
                [f"{cfg.physical('node-exporter')}:{NODE_EXPORTER_PORT}"])))
        image = self._image("prometheus", f"{m.prometheusImage}:{m.prometheusTag}")
        volume = docker.Volume(f"{self.name}-prometheus-data", name=cfg.physical("prometheus-data"),
                               opts=self.child_opts)
        return docker.Container(
            f"{self.name}-prometheus",
            name=cfg.physical("prometheus"),
            image=image.image_id,
            command=[
                "--config.file=/etc/prometheus/prometheus.yml",
                "--storage.tsdb.path=/prometheus",
                f"--storage.tsdb.retention.time={m.retention}",
            ],
            uploads=[docker.ContainerUploadArgs(file="/etc/prometheus/prometheus.yml", content=self.prometheus_yml)]
            + [docker.ContainerUploadArgs(file=path, content=p.read_text()) for path, p in zip(rule_paths, rules)],
            volumes=[docker.ContainerVolumeArgs(volume_name=volume.name, container_path="/prometheus")],
            networks_advanced=[docker.ContainerNetworksAdvancedArgs(name=networks.app.name)],
            ports=[docker.ContainerPortArgs(internal=PROMETHEUS_PORT, external=m.prometheusHostPort,
                                            ip=m.bindAddress)],
            healthcheck=docker.ContainerHealthcheckArgs(
                tests=["CMD", "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{PROMETHEUS_PORT}/-/ready"],
                interval="10s", timeout="3s", retries=5, start_period="10s"),
            restart="unless-stopped",
            # Prometheus writes its head block on SIGTERM; killed, it replays the WAL at the next start.
            destroy_grace_seconds=30,
            labels=_labels(cfg, "prometheus"),
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
        )

    def _grafana(self, networks: Networks) -> docker.Container:
        """Provisioned by files uploaded into the container, rendered from the grafana_provisioning
        role's templates (playbooks/grafana.yml copies the same files after a dashboard change)."""
        m, cfg = self.cfg.monitoring, self.cfg
        files = grafana_files(cfg, f"http://{cfg.physical('prometheus')}:{PROMETHEUS_PORT}")
        if not dashboard_files():
            pulumi.log.warn(f"no dashboards in {DASHBOARDS_DIR}: Grafana starts without dashboards", self)
        image = self._image("grafana", f"{m.grafanaImage}:{m.grafanaTag}")
        volume = docker.Volume(f"{self.name}-grafana-data", name=cfg.physical("grafana-data"), opts=self.child_opts)
        return docker.Container(
            f"{self.name}-grafana",
            name=cfg.physical("grafana"),
            image=image.image_id,
            envs=[
                "GF_SECURITY_ADMIN_USER=admin",
                pulumi.Output.format("GF_SECURITY_ADMIN_PASSWORD={0}", self.grafana_admin_password),
                "GF_USERS_ALLOW_SIGN_UP=false",
                "GF_ANALYTICS_REPORTING_ENABLED=false",
                "GF_ANALYTICS_CHECK_FOR_UPDATES=false",
            ],
            uploads=[docker.ContainerUploadArgs(file=path, content=content) for path, content in files.items()],
            volumes=[docker.ContainerVolumeArgs(volume_name=volume.name, container_path="/var/lib/grafana")],
            networks_advanced=[docker.ContainerNetworksAdvancedArgs(name=networks.app.name)],
            ports=[docker.ContainerPortArgs(internal=GRAFANA_PORT, external=m.grafanaHostPort, ip=m.bindAddress)],
            healthcheck=docker.ContainerHealthcheckArgs(
                tests=["CMD", "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{GRAFANA_PORT}/api/health"],
                interval="10s", timeout="3s", retries=5, start_period="20s"),
            restart="unless-stopped",
            destroy_grace_seconds=10,
            labels=_labels(cfg, "grafana"),
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
        )


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
