"""Redis on the data network, with the brief's eviction and connection settings."""
from __future__ import annotations

import pulumi
import pulumi_docker as docker

from config import PlatformConfig
from network import Networks
from runtime import Health, Mount, Port, Workload


# Redis saves nothing on shutdown here (no persistence configured), so a short grace is enough.
SHUTDOWN_GRACE_SECONDS = 10


class Cache(pulumi.ComponentResource):
    """Redis; ``host`` (a plain value: see service.py) and ``port`` for PREDICTION_REDIS_URL."""

    def __init__(self, name: str, cfg: PlatformConfig, runtime, networks: Networks,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("prediction:cache:Cache", name, None, opts)
        child_opts = pulumi.ResourceOptions(parent=self)
        c = cfg.cache

        image = docker.RemoteImage(f"{name}-image", name=f"{c.image}:{c.tag}", keep_locally=True,
                                   opts=child_opts)
        volume_name = cfg.physical("redis-data")
        volume = runtime.volume(f"{name}-data", volume_name, child_opts)
        self.host = cfg.physical("redis")
        self.container = runtime.run(Workload(
            name=f"{name}-container",
            host=self.host,
            component="cache",
            image=image.image_id,
            command=["redis-server", "--port", str(c.port), "--maxmemory", c.maxmemory,
                     "--maxmemory-policy", c.maxmemoryPolicy, "--timeout", str(c.timeout),
                     "--tcp-keepalive", str(c.tcpKeepalive)],
            mounts=[Mount(target="/data", volume=volume, volume_name=volume_name)],
            networks=[(networks.data, [])],
            ports=[Port(c.port, c.hostPort, c.hostBindAddress)] if c.hostPort is not None else [],
            health=Health(["CMD", "redis-cli", "-p", str(c.port), "ping"], interval="5s", timeout="3s", retries=10,
                          start_period="5s"),
            memory_mb=c.memoryMb,
            stop_grace_seconds=SHUTDOWN_GRACE_SECONDS,
        ), pulumi.ResourceOptions(parent=self, delete_before_replace=True))
        self.port = c.port
        self.register_outputs({"host": self.host, "port": c.port, "volume": volume_name})

    def url(self) -> str:
        """``redis://host:port/0`` for PREDICTION_REDIS_URL."""
        return f"redis://{self.host}:{self.port}/0"
