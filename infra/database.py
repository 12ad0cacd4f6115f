"""TimescaleDB with a named data volume; the schema comes from the service's migrate job."""
from __future__ import annotations

import urllib.parse

import pulumi
import pulumi_docker as docker

from config import PlatformConfig
from network import Networks
from passwords import secret_or_generated
from runtime import Health, Mount, Port, Workload

# The least-privilege role the service logs in as (created by migration 0005_application_role).
APP_ROLE = "prediction_app"
# The PostgreSQL exporter's login (migration 0006_monitoring_role: pg_monitor and CONNECT only).
MONITOR_ROLE = "prediction_monitor"
POSTGRES_PORT = 5432  # the image's; other containers reach it on the data network, hosts via hostPort
POSTGRES_UID = 70  # the image's postgres user, who reads its password file
# PostgreSQL's smart/fast shutdown writes a checkpoint; SIGKILL would mean crash recovery at the next start.
SHUTDOWN_GRACE_SECONDS = 60


class Database(pulumi.ComponentResource):
    """TimescaleDB on the data network.

    Outputs: ``host`` (its DNS name on the data network, a plain value: see service.py), ``port``, ``user``, ``db_name``,
    ``password`` (the owner's, secret; ``dbPassword`` config or generated), ``app_password``
    (``prediction_app``'s, secret; ``appDbPassword`` config or generated) and ``monitor_password``
    (``prediction_monitor``'s, secret; ``monitorDbPassword`` config or generated).
    """

    def __init__(self, name: str, cfg: PlatformConfig, runtime, networks: Networks,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("prediction:database:Database", name, None, opts)
        child_opts = pulumi.ResourceOptions(parent=self)
        db = cfg.database

        # Generated passwords live in the stack's state: a destroyed stack loses them while a protected
        # volume keeps the data they open. Not protected themselves, so setting dbPassword/appDbPassword
        # (which drops the generated one) stays a plain `pulumi up` (docs/pulumi.md, Secrets).
        self.password = secret_or_generated(cfg.secrets.dbPassword, f"{name}-password", 32, child_opts)
        self.app_password = secret_or_generated(cfg.secrets.appDbPassword, f"{name}-app-password", 32, child_opts)
        self.monitor_password = secret_or_generated(cfg.secrets.monitorDbPassword, f"{name}-monitor-password", 32,
                                                    child_opts)

        image = docker.RemoteImage(f"{name}-image", name=f"{db.image}:{db.tag}", keep_locally=True,
                                   opts=child_opts)
        volume_name = cfg.physical("timescaledb-data")
        volume = runtime.volume(f"{name}-data", volume_name,
                                pulumi.ResourceOptions(parent=self, protect=db.protectVolume))

        self.host = cfg.physical("timescaledb")
        self.container = runtime.run(Workload(
            name=f"{name}-container",
            host=self.host,
            component="database",
            image=image.image_id,
            # Only what the server needs; tuning is ALTER SYSTEM by playbooks/db-tune.yml, persisted in
            # the data volume's postgresql.auto.conf (command-line flags would override it).
            command=["postgres", "-c", "listen_addresses=*"],
            env=[f"POSTGRES_USER={db.user}", f"POSTGRES_DB={db.name}", "TIMESCALEDB_TELEMETRY=off"],
            secret_env={"POSTGRES_PASSWORD": self.password},
            secret_uid=POSTGRES_UID,
            mounts=[Mount(target="/var/lib/postgresql/data", volume=volume, volume_name=volume_name)],
            networks=[(networks.data, [])],
            ports=[Port(POSTGRES_PORT, db.hostPort, db.hostBindAddress)] if db.hostPort is not None else [],
            # TCP, not the socket: during initdb the server listens on the socket only, so it turns
            # healthy once initialisation is over. Every 2 s (pg_isready is cheap), so what waits for it
            # (the migrate job, the replicas, a restart) goes on soon after; 30 + 25 × 2 = 80 s to fail.
            health=Health(["CMD-SHELL", f"pg_isready -h 127.0.0.1 -p {POSTGRES_PORT} -U {db.user} -d {db.name}"],
                          interval="2s", timeout="3s", retries=25, start_period="30s"),
            memory_mb=db.memoryMb,
            stop_timeout=SHUTDOWN_GRACE_SECONDS,
            stop_grace_seconds=SHUTDOWN_GRACE_SECONDS,
            wait_timeout=180,
            # One node keeps the data: never a second server on the same files, never an empty volume
            # on another node.
            constraints=[f"node.labels.{cfg.orchestrator.databaseNodeLabel} == true"],
            update_order="stop-first",
        ), pulumi.ResourceOptions(parent=self, delete_before_replace=True))
        self.port = POSTGRES_PORT
        self.user = db.user
        self.db_name = db.name
        self.register_outputs({"host": self.host, "port": POSTGRES_PORT, "volume": volume_name,
                               "password": self.password,
                               "app_password": self.app_password, "monitor_password": self.monitor_password})

    def url(self, app: bool = False) -> pulumi.Output[str]:
        """``postgresql://`` URL of the owner (migrations, ops) or, with ``app``, of ``prediction_app``
        (the service); secret because it holds the password."""
        user, password = (APP_ROLE, self.app_password) if app else (self.user, self.password)
        quoted = password.apply(lambda pw: urllib.parse.quote(pw, safe=""))
        return pulumi.Output.secret(pulumi.Output.format(
            "postgresql://{0}:{1}@{2}:{3}/{4}", user, quoted, self.host, self.port, self.db_name))
