"""TimescaleDB container with a named data volume and the service's migrations as init scripts."""
from __future__ import annotations

import urllib.parse
from pathlib import Path

import pulumi
import pulumi_docker as docker
import pulumi_random as random

from config import REPO_ROOT, PlatformConfig
from network import Networks

MIGRATIONS_DIR = REPO_ROOT / "service/migrations"
INITDB_DIR = "/docker-entrypoint-initdb.d"
POSTGRES_PORT = 5432  # the image's; other containers reach it on the data network, hosts via hostPort


def migration_files(folder: Path = MIGRATIONS_DIR) -> list[Path]:
    """Up-migrations in apply order (top level only: ``down/`` holds the reverse scripts)."""
    return sorted(p for p in folder.glob("*.sql") if p.is_file())


class Database(pulumi.ComponentResource):
    """TimescaleDB on the data network.

    Outputs: ``container_name`` (DNS name on the data network), ``port``, ``user``, ``db_name`` and
    ``password`` (secret; from ``dbPassword`` config or generated).
    """

    def __init__(self, name: str, cfg: PlatformConfig, networks: Networks,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("prediction:database:Database", name, None, opts)
        child_opts = pulumi.ResourceOptions(parent=self)
        db = cfg.database

        if cfg.secrets.dbPassword is not None:
            self.password = pulumi.Output.secret(cfg.secrets.dbPassword)
        else:
            # Alphanumeric only: the password is embedded in a postgresql:// URL.
            generated = random.RandomPassword(f"{name}-password", length=32, special=False, opts=child_opts)
            self.password = pulumi.Output.secret(generated.result)

        image = docker.RemoteImage(f"{name}-image", name=f"{db.image}:{db.tag}", keep_locally=True,
                                   opts=child_opts)
        volume = docker.Volume(
            f"{name}-data", name=cfg.physical("timescaledb-data"),
            opts=pulumi.ResourceOptions(parent=self, protect=db.protectVolume))

        migrations = migration_files()
        if not migrations:
            pulumi.log.warn(f"no migrations in {MIGRATIONS_DIR}: the database starts without the schema", self)
        # The image runs these once, on an empty data directory, in name order; later schema changes
        # reach existing databases through `python -m prediction_service migrate`.
        uploads = [docker.ContainerUploadArgs(file=f"{INITDB_DIR}/{p.name}", content=p.read_text())
                   for p in migrations]

        # Only what the container needs; tuning is ALTER SYSTEM by playbooks/db-tune.yml, persisted in
        # the data volume's postgresql.auto.conf (command-line flags would override it).
        command = ["postgres", "-c", "listen_addresses=*"]

        ports = []
        if db.hostPort is not None:
            ports.append(docker.ContainerPortArgs(internal=POSTGRES_PORT, external=db.hostPort, ip=db.hostBindAddress))

        self.container = docker.Container(
            f"{name}-container",
            name=cfg.physical("timescaledb"),
            image=image.image_id,
            command=command,
            envs=[
                f"POSTGRES_USER={db.user}",
                f"POSTGRES_DB={db.name}",
                pulumi.Output.format("POSTGRES_PASSWORD={0}", self.password),
                "TIMESCALEDB_TELEMETRY=off",
            ],
            volumes=[docker.ContainerVolumeArgs(volume_name=volume.name,
                                                container_path="/var/lib/postgresql/data")],
            uploads=uploads,
            networks_advanced=[docker.ContainerNetworksAdvancedArgs(name=networks.data.name)],
            ports=ports,
            # TCP, not the socket: during initdb the server listens on the socket only, so the
            # container turns healthy after the init scripts have run.
            healthcheck=docker.ContainerHealthcheckArgs(
                tests=["CMD-SHELL", f"pg_isready -h 127.0.0.1 -p {POSTGRES_PORT} -U {db.user} -d {db.name}"],
                interval="5s", timeout="3s", retries=10, start_period="30s"),
            memory=db.memoryMb,
            restart="unless-stopped",
            wait=True,
            wait_timeout=180,
            labels=[docker.ContainerLabelArgs(label="com.prediction.stack", value=cfg.stack),
                    docker.ContainerLabelArgs(label="com.prediction.component", value="database")],
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
        )
        self.container_name = self.container.name
        self.port = POSTGRES_PORT
        self.user = db.user
        self.db_name = db.name
        self.register_outputs({"container_name": self.container.name, "port": POSTGRES_PORT,
                               "volume": volume.name, "password": self.password})

    def url(self) -> pulumi.Output[str]:
        """``postgresql://`` URL for PREDICTION_TIMESCALE_URL; secret because it holds the password."""
        quoted = self.password.apply(lambda pw: urllib.parse.quote(pw, safe=""))
        return pulumi.Output.secret(pulumi.Output.format(
            "postgresql://{0}:{1}@{2}:{3}/{4}", self.user, quoted, self.container_name, self.port, self.db_name))
