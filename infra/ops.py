"""The stack's ops toolbox: where the Ansible playbooks reach the data layer from."""
from __future__ import annotations

import pulumi
import pulumi_docker as docker

from config import PlatformConfig
from network import Networks
from service import PredictionService, build_args, labels

BACKUPS_PATH = "/backups"
MODELS_PATH = "/models"


class Operations(pulumi.ComponentResource):
    """A long-running container of service/Dockerfile's ``ops`` stage — the service's Python (psycopg2,
    redis) plus the PostgreSQL 15 client tools and redis-cli — on the data network only, with the
    backups volume and (staging, prod) the models volume mounted read-write. Ansible reaches it
    through the Docker API (inventories/<stack>), so the database and Redis stay unpublished; dumps
    land in the ``<prefix>-backups`` volume on the Docker host.

    Outputs: ``container_name``, ``backups_volume``.
    """

    def __init__(self, name: str, cfg: PlatformConfig, networks: Networks, service: PredictionService,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("prediction:ops:Operations", name, None, opts)
        child_opts = pulumi.ResourceOptions(parent=self)
        image = docker.Image(f"{name}-image", image_name=f"{cfg.service.imageName}-ops:{cfg.stack}",
                             build=build_args(target="ops"), skip_push=True, opts=child_opts)
        # Kept like the database's: backups must outlive a `pulumi destroy` when the data does.
        self.backups = docker.Volume(f"{name}-backups", name=cfg.physical("backups"),
                                     opts=pulumi.ResourceOptions(parent=self, protect=cfg.database.protectVolume))
        volumes = [docker.ContainerVolumeArgs(volume_name=self.backups.name, container_path=BACKUPS_PATH)]
        if service.models_volume is not None:
            volumes.append(docker.ContainerVolumeArgs(volume_name=service.models_volume.name,
                                                      container_path=MODELS_PATH))
        self.container = docker.Container(
            f"{name}-container",
            name=cfg.physical("ops"),
            image=image.repo_digest,
            # Idle until Ansible runs something in it; tini (init) reaps those and stops at once.
            command=["sleep", "infinity"],
            init=True,
            user="root",
            networks_advanced=[docker.ContainerNetworksAdvancedArgs(name=networks.data.name)],
            volumes=volumes,
            restart="unless-stopped",
            # A playbook may be running in it (a backup): let it finish its current step.
            destroy_grace_seconds=10,
            labels=labels(cfg, "ops"),
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
        )
        self.container_name = self.container.name
        self.register_outputs({"container_name": self.container.name, "backups_volume": self.backups.name})
