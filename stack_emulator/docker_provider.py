"""Create, update and delete docker resources on a real engine the way pulumi-docker 5.2.0 does.

pulumi-docker bundles terraform-provider-docker v4.5.0; each function below names the provider
function it follows (kreuzwerker/terraform-provider-docker ``internal/provider/…``). Every input the
program sets, at every depth, is either translated here or stops the run naming its path
(``check``), so nothing the program asks for is silently dropped.

Host ports may be remapped to free loopback ports (``port_policy="free"``: the tests' stacks never
collide with each other or with anything on this machine); the mapping is kept in the stack's state
so a replaced container gets the same host port again.

Swarm services, secrets and configs are swarm_provider.py's: one DockerProvider serves every resource
type on one engine, as one pulumi-docker provider (``docker:host``) does for a program.
"""
from __future__ import annotations

import base64
import io
import re
import socket
import sys
import tarfile
import time
from pathlib import Path

import docker
import docker.errors
from docker.types import Healthcheck, Mount

from . import swarm_provider
from .outputs import NOT_AVAILABLE, NOT_RUN
from .ports import free_port
from .program import CONTAINER, IMAGE, NETWORK, REMOTE_IMAGE, VOLUME, Resource
from .swarm_provider import SWARM_TYPES, ServiceCreateFailed, ServiceUpdateFailed, SwarmError, SwarmProvider
from .values import reveal

# The engine API this machine's Docker speaks; inputs newer engines need are refused below.
ENGINE_API = "1.41"


class ProviderError(Exception):
    """What the provider would report, or an input the emulator cannot translate (its path)."""


class CreateFailed(ProviderError):
    """The object exists but its create did not finish (Pulumi records it with init errors)."""

    def __init__(self, message: str, resource_id: str):
        super().__init__(message)
        self.resource_id = resource_id


class UpdateFailed(ProviderError):
    """The update failed after it began: Pulumi records the new inputs with the error as init errors
    (a partial failure), so the next run updates the resource again."""

    def __init__(self, message: str, outputs: dict):
        super().__init__(message)
        self.outputs = outputs


def log(message: str) -> None:
    print(f"[provider] {message}", file=sys.stderr, flush=True)


def duration_ns(text: str) -> int:
    """Go's time.ParseDuration ("1m30s", "500ms", "0s") -> nanoseconds, as the provider parses them."""
    units = {"ns": 1, "us": 10**3, "µs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ProviderError(f"cannot read duration {text!r}")
    return int(sum(float(n) * units[u] for n, u in parts))


def port_taken(ip: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip, port))
        except OSError:
            return True
    return False


# -- what the emulator translates, per input path (anything else stops the run) ----------------------
_CONTAINER_TOP = {
    "name", "image", "hostname", "command", "entrypoint", "envs", "user", "workingDir", "labels", "ports",
    "volumes", "mounts", "uploads", "networksAdvanced", "healthcheck", "restart", "maxRetryCount", "memory",
    "memorySwap", "memoryReservation", "cpus", "cpuShares", "cpuSet", "stopTimeout", "stopSignal", "wait",
    "waitTimeout", "mustRun", "start", "attach", "logs", "rm", "removeVolumes", "destroyGraceSeconds", "init",
    "readOnly", "tmpfs", "capabilities", "pidMode", "networkMode", "securityOpts", "sysctls", "groupAdds",
    "shmSize", "logDriver", "logOpts", "privileged", "containerReadRefreshTimeoutMilliseconds",
}
_CONTAINER_NESTED = {
    "ports": {"internal", "external", "ip", "protocol"},
    "volumes": {"volumeName", "hostPath", "containerPath", "readOnly", "fromContainer"},
    "mounts": {"type", "source", "target", "readOnly", "bindOptions", "tmpfsOptions"},
    "mounts.bindOptions": {"propagation"},
    "mounts.tmpfsOptions": {"sizeBytes", "mode"},
    "uploads": {"file", "content", "contentBase64", "source", "executable", "permissions"},
    "networksAdvanced": {"name", "aliases", "ipv4Address", "ipv6Address"},
    "healthcheck": {"tests", "interval", "timeout", "startPeriod", "startInterval", "retries"},
    "labels": {"label", "value"},
    "capabilities": {"adds", "drops"},
}
_NETWORK_INPUTS = {"name", "driver", "internal", "labels", "attachable", "ingress", "ipv6", "options", "ipamConfigs",
                   "ipamDriver", "ipamOptions"}
_NETWORK_NESTED = {"labels": {"label", "value"}, "ipamConfigs": {"subnet", "gateway", "ipRange", "auxAddress"}}
_VOLUME_INPUTS = {"name", "driver", "driverOpts", "labels"}
_VOLUME_NESTED = {"labels": {"label", "value"}}
_REMOTE_IMAGE_INPUTS = {"name", "keepLocally", "forceRemove"}
_IMAGE_INPUTS = {"imageName", "build", "skipPush", "buildOnPreview"}
_IMAGE_NESTED = {"build": {"context", "dockerfile", "platform", "target", "contextDigest"}}
_COMPUTED_ONLY = {"random:index/randomPassword:RandomPassword", "tls:index/privateKey:PrivateKey",
                  "tls:index/selfSignedCert:SelfSignedCert"}


def _check_paths(where: str, inputs: dict, top: set, nested: dict) -> None:
    def walk(prefix: str, value, allowed: set):
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                continue
            for key in item:
                path = f"{prefix}.{key}"
                if key not in allowed:
                    index = f"[{i}]" if isinstance(value, list) else ""
                    raise ProviderError(f"{where}: input {prefix}{index}.{key} is not translated by the stack "
                                        f"emulator (stack_emulator/docker_provider.py); translate it there first")
                sub = nested.get(path)
                if sub is not None:
                    walk(path, item[key], sub)

    for key, value in inputs.items():
        if key not in top:
            raise ProviderError(f"{where}: input {key} is not translated by the stack emulator "
                                f"(stack_emulator/docker_provider.py); translate it there first")
        if key in nested:
            walk(key, value, nested[key])


class DockerProvider:
    """pulumi-docker on ``client``'s engine."""

    def __init__(self, client: docker.DockerClient, images, port_policy: str = "exact",
                 port_map: dict | None = None):
        if port_policy not in ("exact", "free"):
            raise ValueError("port_policy must be 'exact' or 'free'")
        self.client = client
        self.images = images
        self.port_policy = port_policy
        self.port_map = port_map if port_map is not None else {}
        self.swarm = SwarmProvider(client)

    # -- before anything runs -----------------------------------------------------------------
    def check(self, r: Resource) -> None:
        """Every input of ``r`` is one this emulator carries to the engine, or ProviderError."""
        inputs = reveal(r.inputs)
        where = f"{r.name} ({r.type.rsplit(':', 1)[-1]})"
        if r.type == CONTAINER:
            _check_paths(where, inputs, _CONTAINER_TOP, _CONTAINER_NESTED)
            hc = inputs.get("healthcheck") or {}
            if hc.get("startInterval") not in (None, "0s"):
                raise ProviderError(f"{where}: healthcheck.startInterval needs Docker Engine API 1.44; this "
                                    f"engine speaks {ENGINE_API}, which would ignore it")
            for i, n in enumerate(inputs.get("networksAdvanced", [])):
                if n.get("ipv6Address"):
                    raise ProviderError(f"{where}: networksAdvanced[{i}].ipv6Address is not translated")
        elif r.type == NETWORK:
            _check_paths(where, inputs, _NETWORK_INPUTS, _NETWORK_NESTED)
        elif r.type == VOLUME:
            _check_paths(where, inputs, _VOLUME_INPUTS, _VOLUME_NESTED)
        elif r.type == REMOTE_IMAGE:
            _check_paths(where, inputs, _REMOTE_IMAGE_INPUTS, {})
        elif r.type == IMAGE:
            _check_paths(where, inputs, _IMAGE_INPUTS, _IMAGE_NESTED)
        elif r.type in SWARM_TYPES:
            try:
                swarm_provider.check(r)
            except SwarmError as exc:
                raise ProviderError(str(exc)) from None
        elif r.type in _COMPUTED_ONLY or not r.custom:
            return
        else:
            raise ProviderError(f"{where}: resource type {r.type} is not modelled by the stack emulator")

    def taken_ports(self, r: Resource) -> list[str]:
        """Host addresses a container would publish that something already holds (exact ports only)."""
        if r.type != CONTAINER or self.port_policy == "free":
            return []
        out = []
        for p in reveal(r.inputs).get("ports", []):
            ip, external = p.get("ip", "0.0.0.0"), p.get("external")
            if external is not None and port_taken(ip, int(external)):
                out.append(f"{ip}:{external}")
        return out

    # -- create ---------------------------------------------------------------------------------
    def create(self, r: Resource) -> tuple[str, dict]:
        """(id, outputs) of the new object."""
        inputs = reveal(r.inputs)
        if r.type == CONTAINER:
            return self._create_container(inputs)
        if r.type == NETWORK:
            return self._create_network(inputs)
        if r.type == VOLUME:
            return self._create_volume(inputs)
        if r.type in SWARM_TYPES:
            try:
                return self.swarm.create(r)
            except ServiceCreateFailed as exc:
                raise CreateFailed(str(exc), exc.service_id) from None
            except SwarmError as exc:
                raise ProviderError(str(exc)) from None
        # Images were made while the program ran (outputs.py); random/tls values are computed.
        return r.outputs.get("imageId") or r.outputs.get("repoDigest") or f"{r.name}-id", r.outputs

    def _create_network(self, inputs: dict) -> tuple[str, dict]:
        """resourceDockerNetworkCreate (an overlay network on a Swarm manager too: driver overlay,
        attachable, ingress, options such as encrypted)."""
        ipam = None
        if inputs.get("ipamConfigs") or inputs.get("ipamOptions"):
            ipam = docker.types.IPAMConfig(driver=inputs.get("ipamDriver", "default"), pool_configs=[
                docker.types.IPAMPool(subnet=c.get("subnet"), gateway=c.get("gateway"), iprange=c.get("ipRange"),
                                      aux_addresses=c.get("auxAddress")) for c in inputs.get("ipamConfigs", [])],
                options=inputs.get("ipamOptions"))
        try:
            net = self.client.networks.create(
                inputs["name"], driver=inputs.get("driver") or "bridge", internal=bool(inputs.get("internal")),
                attachable=bool(inputs.get("attachable")), ingress=bool(inputs.get("ingress")),
                enable_ipv6=True if inputs.get("ipv6") else None, options=inputs.get("options"), ipam=ipam,
                labels={x["label"]: x["value"] for x in inputs.get("labels", [])})
        except docker.errors.APIError as exc:
            raise ProviderError(f"Unable to create network: {exc.explanation or exc}") from None
        return net.id, {**inputs, "driver": inputs.get("driver") or "bridge"}

    def _create_volume(self, inputs: dict) -> tuple[str, dict]:
        """resourceDockerVolumeCreate: VolumeCreate, which returns the existing volume of that name
        (the engine's volume create is idempotent), so a kept volume is adopted with its data."""
        vol = self.client.volumes.create(inputs["name"], driver=inputs.get("driver") or "local",
                                         driver_opts=inputs.get("driverOpts"),
                                         labels={x["label"]: x["value"] for x in inputs.get("labels", [])})
        return vol.id, {**inputs, "mountpoint": vol.attrs.get("Mountpoint", "")}

    def _host_ports(self, name: str, inputs: dict) -> dict:
        bindings = {}
        for p in inputs.get("ports", []):
            key = f"{int(p['internal'])}/{p.get('protocol', 'tcp')}"
            ip, external = p.get("ip", "0.0.0.0"), p.get("external")
            if self.port_policy == "free":
                wanted = f"{ip}:{external if external is not None else key}"
                if wanted not in self.port_map:
                    self.port_map[wanted] = free_port()
                ip, external = "127.0.0.1", self.port_map[wanted]
            bindings[key] = (ip, int(external)) if external is not None else (ip,)
        return bindings

    def _create_container(self, inputs: dict) -> tuple[str, dict]:
        """resourceDockerContainerCreate: create (on the default bridge network), leave the bridge
        and join each networks_advanced network, upload files, start, wait until healthy
        (``wait``) or until it exits (``attach``), then read it back."""
        name = inputs["name"]
        image = inputs["image"]
        if image.startswith(NOT_AVAILABLE):
            ref = image[len(NOT_AVAILABLE):]
            log(f"not running {name}: no local stand-in of {ref} ({self.images.why_not(ref)})")
            return "", {**inputs, NOT_RUN: self.images.why_not(ref)}
        try:
            self.client.images.get(image)
        except docker.errors.ImageNotFound:
            raise ProviderError(f"Unable to create container with image {image}: not on the engine") from None
        bindings = self._host_ports(name, inputs)
        binds = {}
        for v in inputs.get("volumes", []):
            if v.get("fromContainer"):
                raise ProviderError(f"container {name}: volumes[].fromContainer is not translated")
            source = v.get("volumeName") or v.get("hostPath")
            binds[source] = {"bind": v["containerPath"], "mode": "ro" if v.get("readOnly") else "rw"}
        mounts = []
        for m in inputs.get("mounts", []):
            tmpfs = m.get("tmpfsOptions") or {}
            mounts.append(Mount(m["target"], m.get("source"), type=m["type"], read_only=bool(m.get("readOnly")),
                                propagation=(m.get("bindOptions") or {}).get("propagation"),
                                tmpfs_size=tmpfs.get("sizeBytes"), tmpfs_mode=tmpfs.get("mode")))
        restart = inputs.get("restart", "no")
        caps = inputs.get("capabilities") or {}
        mem = inputs.get("memory")
        swap = None if inputs.get("memorySwap") is None else int(inputs["memorySwap"])
        host_config = self.client.api.create_host_config(
            port_bindings=bindings or None, binds=binds or None, mounts=mounts or None,
            restart_policy={"Name": restart, "MaximumRetryCount": int(inputs.get("maxRetryCount") or 0)},
            mem_limit=f"{int(mem)}m" if mem else None,
            memswap_limit=(swap if swap is not None and swap <= 0 else f"{int(swap)}m") if swap is not None else None,
            mem_reservation=f"{int(inputs['memoryReservation'])}m" if inputs.get("memoryReservation") else None,
            nano_cpus=int(float(inputs["cpus"]) * 1e9) if inputs.get("cpus") else None,
            cpu_shares=inputs.get("cpuShares"), cpuset_cpus=inputs.get("cpuSet"),
            # hostConfig.Init = &init: always sent, false when unset.
            init=bool(inputs.get("init", False)), read_only=bool(inputs.get("readOnly", False)),
            tmpfs=inputs.get("tmpfs"), pid_mode=inputs.get("pidMode"),
            network_mode=inputs.get("networkMode", "bridge"), privileged=bool(inputs.get("privileged", False)),
            cap_add=caps.get("adds"), cap_drop=caps.get("drops"), security_opt=inputs.get("securityOpts"),
            sysctls=inputs.get("sysctls"), group_add=inputs.get("groupAdds"),
            shm_size=f"{int(inputs['shmSize'])}m" if inputs.get("shmSize") else None,
            log_config=({"Type": inputs.get("logDriver", ""), "Config": inputs.get("logOpts") or {}}
                        if inputs.get("logDriver") or inputs.get("logOpts") else None),
            auto_remove=bool(inputs.get("rm", False)))
        hc = inputs.get("healthcheck")
        healthcheck = None
        if hc:
            healthcheck = Healthcheck(test=hc.get("tests"), interval=duration_ns(hc.get("interval", "0s")),
                                      timeout=duration_ns(hc.get("timeout", "0s")),
                                      start_period=duration_ns(hc.get("startPeriod", "0s")),
                                      retries=int(hc.get("retries", 0)))
        for c in inputs.get("command") or []:
            if c == "":
                raise ProviderError(f"container {name}: values for command may not be empty")
        try:
            created = self.client.api.create_container(
                image, name=name, hostname=inputs.get("hostname"), command=inputs.get("command"),
                entrypoint=inputs.get("entrypoint"), environment=inputs.get("envs"), user=inputs.get("user"),
                working_dir=inputs.get("workingDir"),
                labels={x["label"]: x["value"] for x in inputs.get("labels", [])},
                ports=[tuple(k.split("/")) for k in bindings] or None, healthcheck=healthcheck,
                stop_signal=inputs.get("stopSignal"),
                stop_timeout=int(inputs["stopTimeout"]) if inputs.get("stopTimeout") is not None else None,
                host_config=host_config)
        except docker.errors.APIError as exc:
            raise ProviderError(f"Unable to create container {name}: {exc.explanation or exc}") from None
        cid = created["Id"]
        container = self.client.containers.get(cid)
        try:
            networks = inputs.get("networksAdvanced") or []
            if networks:
                try:
                    self.client.networks.get("bridge").disconnect(container)
                except docker.errors.APIError as exc:
                    if "is not connected" not in str(exc):
                        raise
                for n in networks:
                    self.client.networks.get(n["name"]).connect(container, aliases=n.get("aliases"),
                                                                ipv4_address=n.get("ipv4Address"))
            for upload in inputs.get("uploads", []):
                container.put_archive("/", self._upload(upload))
            if inputs.get("start", True):
                container.start()
        except docker.errors.APIError as exc:
            raise CreateFailed(f"container {name}: {exc.explanation or exc}", cid) from None
        if inputs.get("start", True) and inputs.get("wait"):
            self._wait_healthy(container, int(inputs.get("waitTimeout", 60)))
        if inputs.get("attach"):
            container.wait()  # WaitConditionNotRunning
        return cid, self._read_container(container, inputs)

    def _wait_healthy(self, container, timeout: int) -> None:
        """The provider's ``wait``: inspect every second until healthy, else after ``wait_timeout``
        seconds "container failed to be in healthy state" — an exited container too is waited on."""
        started = time.monotonic()
        while True:
            container.reload()
            health = container.attrs["State"].get("Health")
            if health is None:
                raise CreateFailed("you have supplied a 'wait' argument, but the container does not have a "
                                   "healthcheck defined", container.id)
            if health.get("Status") == "healthy":
                return
            if time.monotonic() - started >= timeout:
                tail = container.logs(tail=15).decode(errors="replace").strip()
                raise CreateFailed(f"container {container.name}: container failed to be in healthy state "
                                   f"(wait_timeout {timeout}s; state {container.attrs['State']['Status']}); "
                                   f"its last log lines:\n{tail}", container.id)
            time.sleep(1)

    @staticmethod
    def _read_container(container, inputs: dict) -> dict:
        """resourceDockerContainerRead: exit_code of a stopped container; a stopped container that
        must run is recorded with must_run false (so the next run starts it again)."""
        container.reload()
        state = container.attrs["State"]
        outputs = {**inputs}
        if not state.get("Running"):
            outputs["exitCode"] = state.get("ExitCode")
            if inputs.get("mustRun", True):
                outputs["mustRun"] = False
        return outputs

    @staticmethod
    def _upload(upload: dict) -> bytes:
        if "content" in upload:
            data = upload["content"].encode()
        elif "contentBase64" in upload:
            data = base64.b64decode(upload["contentBase64"])
        else:
            data = Path(upload["source"]).read_bytes()
        if upload.get("permissions"):
            mode = int(upload["permissions"], 8)
        else:
            mode = 0o744 if upload.get("executable") else 0o644
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(upload["file"].lstrip("/"))
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    # -- update ---------------------------------------------------------------------------------
    def update(self, old, new: Resource, update_keys: list[str]) -> dict:
        """resourceDockerContainerUpdate: must_run false -> true starts the container; a change of
        restart, max_retry_count, cpu_shares, memory, memory_reservation, cpu_set or memory_swap is one
        ContainerUpdate with all of them; nothing else touches the container."""
        inputs = reveal(new.inputs)
        outputs = {**old.outputs, **new.inputs}
        if new.type in SWARM_TYPES:
            try:
                self.swarm.update(old, new)
            except ServiceUpdateFailed as exc:
                raise UpdateFailed(str(exc), outputs) from None
            except SwarmError as exc:
                raise ProviderError(str(exc)) from None
            return outputs
        if new.type != CONTAINER or not update_keys or not old.id:
            return outputs
        container = self.client.containers.get(old.id)
        if "mustRun" in update_keys and inputs.get("mustRun", True) and not reveal(old.outputs).get("mustRun", True):
            if inputs.get("start", True):
                container.start()
        resource_keys = {"restart", "maxRetryCount", "cpuShares", "memory", "memoryReservation", "cpuSet", "memorySwap"}
        if resource_keys & set(update_keys):
            swap = None if inputs.get("memorySwap") is None else int(inputs["memorySwap"])
            try:
                self.client.api.update_container(
                    old.id, restart_policy={"Name": inputs.get("restart", "no"),
                                            "MaximumRetryCount": int(inputs.get("maxRetryCount") or 0)},
                    cpu_shares=int(inputs["cpuShares"]) if inputs.get("cpuShares") else None,
                    mem_limit=int(inputs["memory"]) * 1024 * 1024 if inputs.get("memory") else None,
                    mem_reservation=int(inputs.get("memoryReservation") or 0) * 1024 * 1024 or None,
                    cpuset_cpus=inputs.get("cpuSet"),
                    memswap_limit=(swap * 1024 * 1024 if swap and swap > 0 else swap) if swap is not None else None)
            except docker.errors.APIError as exc:
                raise ProviderError(f"Unable to update a container: {exc.explanation or exc}") from None
        return self._read_container(container, inputs) | {k: v for k, v in new.inputs.items()
                                                          if k not in ("mustRun",)}

    # -- delete ---------------------------------------------------------------------------------
    def delete(self, old) -> None:
        inputs = reveal(old.inputs)
        if old.type == CONTAINER:
            self._delete_container(old.id, inputs)
        elif old.type == NETWORK:
            self._delete_network(old.id)
        elif old.type in SWARM_TYPES:
            try:
                self.swarm.delete(old)
            except SwarmError as exc:
                raise ProviderError(str(exc)) from None
        elif old.type == VOLUME:
            self._delete_volume(inputs["name"])
        elif old.type == REMOTE_IMAGE:
            # resourceDockerImageDelete: the image stays when keep_locally is set.
            if not inputs.get("keepLocally"):
                try:
                    self.client.images.remove(reveal(old.outputs).get("imageId") or inputs["name"],
                                              force=bool(inputs.get("forceRemove")))
                except docker.errors.ImageNotFound:
                    pass
        # docker.Image: pulumi-docker's Delete does nothing; random/tls have nothing on the engine.

    def _delete_container(self, cid: str, inputs: dict) -> None:
        if not cid:
            return  # never run (its image cannot be had here)
        """resourceDockerContainerDelete: unless ``attach``, ContainerStop with a timeout of
        ``destroy_grace_seconds`` — 0 when unset, so the process gets SIGTERM and, at once, SIGKILL —
        then a forced ContainerRemove (anonymous volumes too unless ``remove_volumes`` is false) and a
        wait until it is gone."""
        try:
            container = self.client.containers.get(cid)
        except docker.errors.NotFound:
            return
        if not inputs.get("attach"):
            grace = int(inputs.get("destroyGraceSeconds") or 0)
            started = time.monotonic()
            try:
                container.stop(timeout=max(grace, 0))
            except docker.errors.NotFound:
                return
            log(f"stopped {container.name} in {time.monotonic() - started:.1f}s (destroy_grace_seconds {grace})")
        try:
            container.remove(force=True, v=inputs.get("removeVolumes", True))
        except docker.errors.NotFound:
            pass

    def _delete_network(self, network_id: str, timeout: float = 30) -> None:
        """resourceDockerNetworkRemoveRefreshFunc: remove, again every 5 s while the network "has active
        endpoints" (the tasks of a just-removed service still leaving an overlay network), up to 30 s."""
        _remove_while_busy(lambda: self.client.api.remove_network(network_id), "has active endpoints",
                           f"network {network_id}", interval=5, timeout=timeout)

    def _delete_volume(self, name: str) -> None:
        """resourceDockerVolumeDelete: remove, retrying while the volume is in use (the provider
        waits up to 30 s for its users to go)."""
        _remove_while_busy(lambda: self.client.volumes.get(name).remove(), "in use", f"volume {name}",
                           interval=1, timeout=30)


def _remove_while_busy(remove, busy: str, what: str, *, interval: float, timeout: float) -> None:
    """``remove()``; gone already counts as removed. An error saying ``busy`` is retried every
    ``interval`` seconds for ``timeout`` seconds; any other error, or the last, is a ProviderError."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            remove()
            return
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            if busy not in str(exc) or time.monotonic() > deadline:
                raise ProviderError(f"Unable to remove {what}: {exc.explanation or exc}") from None
            time.sleep(interval)
