"""Per-stack Docker networks: one for the application tier, one internal one for the data layer."""
from __future__ import annotations

import pulumi
import pulumi_docker as docker

from config import PlatformConfig


class Networks(pulumi.ComponentResource):
    """``app``: gateway, replicas and monitoring. ``data``: database, cache and the replicas only.

    With ``network.dataInternal`` (staging/prod) the data network has no route in or out of the
    host, so the database and Redis are reachable from the replicas and nothing else.
    """

    def __init__(self, name: str, cfg: PlatformConfig, opts: pulumi.ResourceOptions | None = None):
        super().__init__("prediction:network:Networks", name, None, opts)
        # Fixed names: a changed network must go before its replacement can have the name, and the
        # containers on it are replaced with it (the provider's default would be create-before-delete).
        child_opts = pulumi.ResourceOptions(parent=self, delete_before_replace=True)
        labels = [docker.NetworkLabelArgs(label="com.prediction.stack", value=cfg.stack)]

        self.app = docker.Network(
            f"{name}-app",
            name=cfg.physical("app"),
            driver="bridge",
            internal=False,
            labels=labels,
            opts=child_opts,
        )
        self.data = docker.Network(
            f"{name}-data",
            name=cfg.physical("data"),
            driver="bridge",
            internal=cfg.network.dataInternal,
            labels=labels,
            opts=child_opts,
        )
        self.app_name = self.app.name
        self.data_name = self.data.name
        self.register_outputs({"app": self.app.name, "data": self.data.name})
