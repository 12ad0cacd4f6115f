"""Prometheus scraping every replica, and Grafana provisioned from the ops role's templates."""
from __future__ import annotations

from pathlib import Path

import pulumi
import pulumi_docker as docker
import pulumi_random as random

import templates
from config import REPO_ROOT, PlatformConfig
from network import Networks
from service import PredictionService

ALERT_RULES_DIR = REPO_ROOT / "dashboards/alerts"
DASHBOARDS_DIR = REPO_ROOT / "dashboards/grafana"
PROMETHEUS_PORT = 9090
GRAFANA_PORT = 3000
RULES_IN_CONTAINER = "/etc/prometheus/rules"
DASHBOARDS_IN_CONTAINER = "/etc/grafana/dashboards"


def alert_rule_files(folder: Path = ALERT_RULES_DIR) -> list[Path]:
    return sorted(p for p in folder.glob("*.rules.yml") if p.is_file())


def dashboard_files(folder: Path = DASHBOARDS_DIR) -> list[Path]:
    return sorted(p for p in folder.glob("*.json") if p.is_file())


def prometheus_variables(cfg: PlatformConfig, replica_names: list[str], port: int,
                         rule_files: list[str]) -> dict:
    """Template variables of roles/prometheus_server/templates/prometheus.yml.j2 for the container."""
    m = cfg.monitoring
    return {
        "prometheus_scrape_interval": m.scrapeInterval,
        "prometheus_evaluation_interval": m.evaluationInterval,
        "prometheus_external_labels": {"environment": cfg.stack},
        "prometheus_rule_files": rule_files,
        "prometheus_service_targets": [{"target": f"{n}:{port}", "instance": n} for n in replica_names],
        "prometheus_node_exporter_targets": list(m.nodeExporterTargets),
        "prometheus_self_target": f"localhost:{PROMETHEUS_PORT}",
    }


def _labels(cfg: PlatformConfig, component: str) -> list[docker.ContainerLabelArgs]:
    return [docker.ContainerLabelArgs(label="com.prediction.stack", value=cfg.stack),
            docker.ContainerLabelArgs(label="com.prediction.component", value=component)]


class Monitoring(pulumi.ComponentResource):
    """Prometheus and Grafana on the app network, published on ``monitoring.bindAddress``.

    Outputs: ``prometheus_url``, ``grafana_url``, ``prometheus_yml`` (rendered), ``grafana_admin_password``
    (secret; from ``grafanaAdminPassword`` config or generated).
    """

    def __init__(self, name: str, cfg: PlatformConfig, networks: Networks, service: PredictionService,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("prediction:monitoring:Monitoring", name, None, opts)
        child_opts = pulumi.ResourceOptions(parent=self)
        m = cfg.monitoring

        # --- Prometheus -------------------------------------------------------------------------
        rules = alert_rule_files()
        if not rules:
            pulumi.log.warn(f"no alert rules in {ALERT_RULES_DIR}: Prometheus runs without alerts", self)
        rule_paths = [f"{RULES_IN_CONTAINER}/{p.name}" for p in rules]
        self.prometheus_yml = pulumi.Output.all(*[r.name for r in service.replicas]).apply(
            lambda names: templates.render(
                templates.PROMETHEUS_YML, **prometheus_variables(cfg, names, service.port, rule_paths)))

        prom_image = docker.RemoteImage(f"{name}-prometheus-image", name=f"{m.prometheusImage}:{m.prometheusTag}",
                                        keep_locally=True, opts=child_opts)
        prom_volume = docker.Volume(f"{name}-prometheus-data", name=cfg.physical("prometheus-data"), opts=child_opts)
        self.prometheus = docker.Container(
            f"{name}-prometheus",
            name=cfg.physical("prometheus"),
            image=prom_image.image_id,
            command=[
                "--config.file=/etc/prometheus/prometheus.yml",
                "--storage.tsdb.path=/prometheus",
                f"--storage.tsdb.retention.time={m.retention}",
            ],
            uploads=[docker.ContainerUploadArgs(file="/etc/prometheus/prometheus.yml", content=self.prometheus_yml)]
            + [docker.ContainerUploadArgs(file=path, content=p.read_text()) for path, p in zip(rule_paths, rules)],
            volumes=[docker.ContainerVolumeArgs(volume_name=prom_volume.name, container_path="/prometheus")],
            networks_advanced=[docker.ContainerNetworksAdvancedArgs(name=networks.app.name)],
            ports=[docker.ContainerPortArgs(internal=PROMETHEUS_PORT, external=m.prometheusHostPort,
                                            ip=m.bindAddress)],
            healthcheck=docker.ContainerHealthcheckArgs(
                tests=["CMD", "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{PROMETHEUS_PORT}/-/ready"],
                interval="10s", timeout="3s", retries=5, start_period="10s"),
            restart="unless-stopped",
            labels=_labels(cfg, "prometheus"),
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
        )

        # --- Grafana ----------------------------------------------------------------------------
        if cfg.secrets.grafanaAdminPassword is not None:
            self.grafana_admin_password = pulumi.Output.secret(cfg.secrets.grafanaAdminPassword)
        else:
            generated = random.RandomPassword(f"{name}-grafana-admin-password", length=24, special=False,
                                              opts=child_opts)
            self.grafana_admin_password = pulumi.Output.secret(generated.result)

        prometheus_url = pulumi.Output.format("http://{0}:{1}", self.prometheus.name, PROMETHEUS_PORT)
        datasource_yml = prometheus_url.apply(lambda url: templates.render(
            templates.GRAFANA_DATASOURCE,
            grafana_provisioning_prometheus_url=url,
            grafana_provisioning_datasource_uid=m.datasourceUid,
            grafana_provisioning_scrape_interval=m.scrapeInterval))
        dashboards_yml = templates.render(templates.GRAFANA_DASHBOARDS,
                                          grafana_provisioning_dashboards_dir=DASHBOARDS_IN_CONTAINER)
        dashboards = dashboard_files()
        if not dashboards:
            pulumi.log.warn(f"no dashboards in {DASHBOARDS_DIR}: Grafana starts without dashboards", self)

        grafana_image = docker.RemoteImage(f"{name}-grafana-image", name=f"{m.grafanaImage}:{m.grafanaTag}",
                                           keep_locally=True, opts=child_opts)
        grafana_volume = docker.Volume(f"{name}-grafana-data", name=cfg.physical("grafana-data"), opts=child_opts)
        self.grafana = docker.Container(
            f"{name}-grafana",
            name=cfg.physical("grafana"),
            image=grafana_image.image_id,
            envs=[
                "GF_SECURITY_ADMIN_USER=admin",
                pulumi.Output.format("GF_SECURITY_ADMIN_PASSWORD={0}", self.grafana_admin_password),
                "GF_USERS_ALLOW_SIGN_UP=false",
                "GF_ANALYTICS_REPORTING_ENABLED=false",
                "GF_ANALYTICS_CHECK_FOR_UPDATES=false",
            ],
            uploads=[
                docker.ContainerUploadArgs(file="/etc/grafana/provisioning/datasources/prediction.yml",
                                           content=datasource_yml),
                docker.ContainerUploadArgs(file="/etc/grafana/provisioning/dashboards/prediction.yml",
                                           content=dashboards_yml),
            ] + [docker.ContainerUploadArgs(file=f"{DASHBOARDS_IN_CONTAINER}/{p.name}", content=p.read_text())
                 for p in dashboards],
            volumes=[docker.ContainerVolumeArgs(volume_name=grafana_volume.name, container_path="/var/lib/grafana")],
            networks_advanced=[docker.ContainerNetworksAdvancedArgs(name=networks.app.name)],
            ports=[docker.ContainerPortArgs(internal=GRAFANA_PORT, external=m.grafanaHostPort, ip=m.bindAddress)],
            healthcheck=docker.ContainerHealthcheckArgs(
                tests=["CMD", "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{GRAFANA_PORT}/api/health"],
                interval="10s", timeout="3s", retries=5, start_period="20s"),
            restart="unless-stopped",
            labels=_labels(cfg, "grafana"),
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
        )

        # Published on all interfaces, they are reached by the gateway's host name.
        host = cfg.gateway.serverName if m.bindAddress == "0.0.0.0" else m.bindAddress
        self.prometheus_url = pulumi.Output.from_input(f"http://{host}:{m.prometheusHostPort}")
        self.grafana_url = pulumi.Output.from_input(f"http://{host}:{m.grafanaHostPort}")
        self.register_outputs({"prometheus_url": self.prometheus_url, "grafana_url": self.grafana_url,
                               "grafana_admin_password": self.grafana_admin_password})
