"""Per-stack networks: one for the application tier, one (internal) for the data layer."""
from __future__ import annotations

import pulumi

from config import PlatformConfig


class Networks(pulumi.ComponentResource):
    """``app``: gateway, replicas and monitoring. ``data``: database, cache, the replicas, the migrate
    job and the ops toolbox.

    With ``network.dataInternal`` (staging/prod) the data network has no route in or out, so the
    database and Redis are reachable from the replicas and nothing else. Bridge networks on one
    engine, overlay networks on a Swarm (infra/runtime.py).
    """

    def __init__(self, name: str, cfg: PlatformConfig, runtime, opts: pulumi.ResourceOptions | None = None):
        super().__init__("prediction:network:Networks", name, None, opts)
        # Fixed names: a changed network must go before its replacement can have the name, and the
        # containers on it are replaced with it (the provider's default would be create-before-delete).
        child_opts = pulumi.ResourceOptions(parent=self, delete_before_replace=True)
        self.app = runtime.network(f"{name}-app", cfg.physical("app"), False, child_opts)
        self.data = runtime.network(f"{name}-data", cfg.physical("data"), cfg.network.dataInternal, child_opts)
        self.app_name = self.app.name
        self.data_name = self.data.name
        self.register_outputs({"app": self.app.name, "data": self.data.name})
