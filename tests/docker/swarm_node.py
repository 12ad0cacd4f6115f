"""A throwaway one-node Docker Swarm for the swarm provider's tests: a container running its own
dockerd (Debian 12's docker.io, as on the host), never the host's engine.

The host engine refuses --privileged; what works here: every capability but SYS_RESOURCE, unconfined
seccomp/AppArmor/system paths, all devices, a private cgroup namespace, and an entrypoint that
remounts /sys and the cgroup controllers read-write (swarm_node/entrypoint.sh). The node's API is a
unix socket in a host folder mounted into it; images move in with `docker save | docker load`
(there is no registry). Ports the tests publish on the node are mapped to free 127.0.0.1 ports.
"""
from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import docker
import docker.errors

from stack_emulator.images import BASE_TAG, Images

HERE = Path(__file__).resolve().parent / "swarm_node"
TAG = "prediction-local/test-swarm-node:bookworm"
LABEL = "com.prediction.test-swarm-node"
RECIPE = "com.prediction.recipe"


def _recipe_digest(base_id: str) -> str:
    h = hashlib.sha256(base_id.encode())
    for path in sorted(HERE.iterdir()):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def ensure_image(host: docker.DockerClient) -> str:
    """The node image, built once (again when its recipe or the Debian base changes)."""
    base_id = Images(host).ensure_base()
    digest = _recipe_digest(base_id)
    try:
        image = host.images.get(TAG)
        if image.labels.get(RECIPE) == digest:
            return image.id
    except docker.errors.ImageNotFound:
        pass
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in HERE.iterdir():
            tar.add(path, arcname=path.name)
    buf.seek(0)
    image, _ = host.images.build(fileobj=buf, custom_context=True, tag=TAG, buildargs={"BASE": BASE_TAG},
                                 labels={RECIPE: digest}, rm=True, forcerm=True)
    return image.id


class SwarmNode:
    """``with SwarmNode(host, name, ports=[8080]) as node:`` — ``node.client`` is the manager's engine."""

    def __init__(self, host: docker.DockerClient, name: str, ports: tuple[int, ...] = ()):
        self.host = host
        self.name = name
        self.ports = ports
        self.api_dir = Path(tempfile.mkdtemp(prefix=f"{name}-api-"))
        self.container = None
        self.client: docker.DockerClient | None = None

    def __enter__(self) -> "SwarmNode":
        try:
            self.start()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def start(self, timeout: float = 90) -> None:
        ensure_image(self.host)
        api = self.host.api
        host_config = api.create_host_config(
            cap_add=["ALL"], cap_drop=["SYS_RESOURCE"], security_opt=["seccomp=unconfined", "apparmor=unconfined"],
            device_cgroup_rules=["a *:* rwm"], cgroupns="private",
            binds={str(self.api_dir): {"bind": "/run/node-api", "mode": "rw"}},
            port_bindings={p: ("127.0.0.1",) for p in self.ports})
        # --security-opt systempaths=unconfined, which the CLI sends as empty masked/read-only paths.
        host_config["MaskedPaths"], host_config["ReadonlyPaths"] = [], []
        created = api.create_container(TAG, ["--host=unix:///run/node-api/docker.sock"], name=self.name,
                                       hostname=self.name, labels={LABEL: self.name}, ports=list(self.ports),
                                       host_config=host_config)
        self.container = self.host.containers.get(created["Id"])
        self.container.start()
        socket = self.api_dir / "docker.sock"
        deadline = time.monotonic() + timeout
        while True:
            try:
                if socket.exists():
                    client = docker.DockerClient(base_url=f"unix://{socket}", timeout=180)
                    client.ping()
                    self.client = client
                    break
            except docker.errors.DockerException:
                pass
            self.container.reload()
            if self.container.status != "running" or time.monotonic() > deadline:
                raise RuntimeError(f"swarm node {self.name} did not start: "
                                   f"{self.container.logs(tail=20).decode(errors='replace')}")
            time.sleep(0.5)
        self.container.reload()
        address = next(iter(self.container.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]
        self.client.swarm.init(advertise_addr=address, listen_addr=f"{address}:2377")

    def load(self, *refs: str) -> None:
        """Copy images from the host's engine (docker save | docker load)."""
        for ref in refs:
            self.client.images.load(self.host.images.get(ref).save(named=True))

    def host_port(self, port: int) -> int:
        self.container.reload()
        return int(self.container.attrs["NetworkSettings"]["Ports"][f"{port}/tcp"][0]["HostPort"])

    def remove(self) -> None:
        """The node and its engine's data (its /var/lib/docker volume) go; nothing stays on the host."""
        if self.client is not None:
            self.client.close()
        try:
            container = self.container or self.host.containers.get(self.name)
            container.remove(force=True, v=True)
        except docker.errors.NotFound:
            pass
        shutil.rmtree(self.api_dir, ignore_errors=True)
