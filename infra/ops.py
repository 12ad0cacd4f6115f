"""The stack's ops toolbox: where the Ansible playbooks reach the data layer from."""
from __future__ import annotations

import pulumi
import pulumi_docker as docker

from config import PlatformConfig
from network import Networks
from runtime import Mount, Workload
from service import PredictionService, build_args

BACKUPS_PATH = "/backups"
MODELS_PATH = "/models"


class Operations(pulumi.ComponentResource):
    """A long-running container (on a Swarm: on the manager) of service/Dockerfile's ``ops`` stage — the service's Python (psycopg2,
    redis) plus the PostgreSQL 15 client tools and redis-cli — on the data network only, with the
    backups volume and (staging, prod) the models volume mounted read-write. Ansible reaches it
    through the Docker API (inventories/<stack>), so the database and Redis stay unpublished; dumps
    land in the ``<prefix>-backups`` volume on the Docker host.

    Outputs: ``container_name``, ``backups_volume``.
    """

    def __init__(self, name: str, cfg: PlatformConfig, runtime, networks: Networks, service: PredictionService,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("prediction:ops:Operations", name, None, opts)
        child_opts = pulumi.ResourceOptions(parent=self)
        image = docker.Image(f"{name}-image", image_name=f"{cfg.service.imageName}-ops:{cfg.stack}",
                             build=build_args(target="ops"), skip_push=True, opts=child_opts)
        # Kept like the database's: backups must outlive a `pulumi destroy` when the data does. A volume of
        # the engine the provider talks to (the manager, on a Swarm), where this container runs.
        self.backups = docker.Volume(f"{name}-backups", name=cfg.physical("backups"),
                                     opts=pulumi.ResourceOptions(parent=self, protect=cfg.database.protectVolume))
        mounts = [Mount(target=BACKUPS_PATH, volume=self.backups, volume_name=cfg.physical("backups"))]
        if service.models_volume is not None:
            mounts.append(Mount(target=MODELS_PATH, volume=service.models_volume, volume_name=cfg.physical("models")))
        self.container = runtime.toolbox(Workload(
            name=f"{name}-container",
            host=cfg.physical("ops"),
            component="ops",
            image=image.repo_digest,
            # Idle until Ansible runs something in it; tini (init) reaps those and stops at once.
            command=["sleep", "infinity"],
            init=True,
            user="root",
            networks=[(networks.data, [])],
            mounts=mounts,
            # A playbook may be running in it (a backup): let it finish its current step.
            stop_grace_seconds=10,
            wait=False,
        ), pulumi.ResourceOptions(parent=self, delete_before_replace=True))
        self.container_name = self.container.name
        self.register_outputs({"container_name": self.container.name, "backups_volume": self.backups.name})
