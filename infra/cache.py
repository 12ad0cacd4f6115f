"""Redis cache container on the data network, with the brief's eviction and connection settings."""
from __future__ import annotations

import pulumi
import pulumi_docker as docker

from config import PlatformConfig
from network import Networks


# Redis saves nothing on shutdown here (no persistence configured), so a short grace is enough.
SHUTDOWN_GRACE_SECONDS = 10


class Cache(pulumi.ComponentResource):
    """Redis; ``host`` (a plain value: see service.py) and ``port`` for PREDICTION_REDIS_URL."""

    def __init__(self, name: str, cfg: PlatformConfig, networks: Networks,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("prediction:cache:Cache", name, None, opts)
        child_opts = pulumi.ResourceOptions(parent=self)
        c = cfg.cache

        image = docker.RemoteImage(f"{name}-image", name=f"{c.image}:{c.tag}", keep_locally=True,
                                   opts=child_opts)
        volume = docker.Volume(f"{name}-data", name=cfg.physical("redis-data"), opts=child_opts)
        ports = []
        if c.hostPort is not None:
            ports.append(docker.ContainerPortArgs(internal=c.port, external=c.hostPort, ip=c.hostBindAddress))

        self.host = cfg.physical("redis")
        self.container = docker.Container(
            f"{name}-container",
            name=self.host,
            image=image.image_id,
            command=[
                "redis-server",
                "--port", str(c.port),
                "--maxmemory", c.maxmemory,
                "--maxmemory-policy", c.maxmemoryPolicy,
                "--timeout", str(c.timeout),
                "--tcp-keepalive", str(c.tcpKeepalive),
            ],
            volumes=[docker.ContainerVolumeArgs(volume_name=volume.name, container_path="/data")],
            networks_advanced=[docker.ContainerNetworksAdvancedArgs(name=networks.data.name)],
            ports=ports,
            healthcheck=docker.ContainerHealthcheckArgs(
                tests=["CMD", "redis-cli", "-p", str(c.port), "ping"],
                interval="5s", timeout="3s", retries=10, start_period="5s"),
            memory=c.memoryMb,
            # Swap limit = memory limit (no swap), set with it: Docker refuses an in-place memory update
            # (pulumi-docker's ContainerUpdate) that leaves the old swap limit below the new memory.
            memory_swap=c.memoryMb,
            restart="unless-stopped",
            wait=True,
            destroy_grace_seconds=SHUTDOWN_GRACE_SECONDS,
            labels=[docker.ContainerLabelArgs(label="com.prediction.stack", value=cfg.stack),
                    docker.ContainerLabelArgs(label="com.prediction.component", value="cache")],
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
        )
        self.port = c.port
        self.register_outputs({"container_name": self.container.name, "host": self.host, "port": c.port,
                               "volume": volume.name})

    def url(self) -> str:
        """``redis://host:port/0`` for PREDICTION_REDIS_URL."""
        return f"redis://{self.host}:{self.port}/0"
