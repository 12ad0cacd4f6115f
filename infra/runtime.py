"""Where the platform's workloads run: containers on one Docker engine, or services on a Docker Swarm.

The components (database.py, cache.py, service.py, gateway.py, monitoring.py) describe each workload
once — image, command, environment, secrets, files, networks, volumes, ports, healthcheck, limits,
shutdown grace — as a ``Workload``; the stack's ``orchestrator.kind`` picks the runtime that turns it
into resources. Nothing in a component looks at the stack or the runtime:

- ``EngineRuntime``: a ``docker.Container`` per workload (per replica), secrets as environment
  variables, files uploaded into the container, named volumes, bridge networks.
- ``SwarmRuntime``: a ``docker.Service`` per workload (``replicas`` tasks, or one per node), secrets as
  ``docker.Secret`` files under /run/secrets/ (the images' ``*_FILE`` convention), files as
  ``docker.ServiceConfig``, both named by a hash of their content (they are immutable: a change is a
  new one), overlay networks, rolling updates that roll back on a failed healthcheck, placement.
  One-shot and toolbox containers (the migrate job, the ops toolbox) stay containers, on the
  manager, on attachable overlay networks.
"""
from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from typing import Optional

import pulumi
import pulumi_docker as docker

from config import PlatformConfig


@dataclass
class File:
    """A file the workload reads: uploaded (engine) or a config/secret (swarm)."""
    path: str
    content: pulumi.Input[str]
    secret: bool = False
    mode: int = 0o444
    uid: int = 0


@dataclass
class Port:
    internal: int
    external: int
    ip: str = "0.0.0.0"


@dataclass
class Mount:
    """A named volume (``volume``) or a host path (``host_path``) at ``target``."""
    target: str
    volume: Optional[docker.Volume] = None
    volume_name: str = ""
    host_path: str = ""
    read_only: bool = False
    bind_root: bool = False  # a read-only bind of the host's / (node-exporter)


@dataclass
class Health:
    """A workload's healthcheck. Docker runs the first probe one ``interval`` after the start (20.10
    has no start_interval), and Swarm, `pulumi up` (wait / converge_config) and the roll-outs count a
    task as running only once a probe passed: the interval is how soon a new task counts, so keep it
    short where the probe is cheap."""
    tests: list
    interval: str
    timeout: str
    retries: int
    start_period: str

    def seconds_to_fail(self) -> int:
        """How long a failing task takes to be marked unhealthy: start period + interval × retries."""
        return _seconds(self.start_period) + _seconds(self.interval) * self.retries


@dataclass
class Workload:
    name: str  # logical resource name
    host: str  # its name on the networks (container name, or service name)
    component: str
    image: pulumi.Input[str]
    command: Optional[list] = None
    env: list = field(default_factory=list)
    # VAR -> secret value: VAR=value in the environment (engine), or VAR_FILE=/run/secrets/<name> (swarm)
    secret_env: dict = field(default_factory=dict)
    secret_uid: int = 0  # who may read the secret files (the process's user)
    secret_file_suffix: str = "_FILE"  # the image's convention (Grafana's is "__FILE")
    files: list = field(default_factory=list)
    networks: list = field(default_factory=list)  # (docker.Network, [aliases])
    mounts: list = field(default_factory=list)
    ports: list = field(default_factory=list)
    health: Optional[Health] = None
    memory_mb: Optional[int] = None
    cpus: Optional[float] = None
    memory_reserved_mb: Optional[int] = None
    cpus_reserved: Optional[float] = None
    stop_grace_seconds: int = 10
    stop_timeout: Optional[int] = None
    # One engine's restart policy (a Swarm task restarts whenever it ends: SwarmRuntime._service).
    restart: str = "unless-stopped"
    max_retry_count: int = 0
    user: Optional[str] = None
    init: Optional[bool] = None
    hostname: Optional[str] = None
    pid_host: bool = False
    # Swarm: where tasks may run, and how an update replaces them ("stop-first" where two tasks must
    # never run side by side: the database on its volume, a host port).
    constraints: list = field(default_factory=list)
    update_order: str = "start-first"
    wait: bool = True
    wait_timeout: int = 60
    labels: list = field(default_factory=list)  # extra (label, value)


def _seconds(duration: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600}
    return int(duration[:-1]) * units[duration[-1]] if duration[-1] in units else int(duration)


def _labels(cfg: PlatformConfig, w: Workload) -> list[tuple[str, str]]:
    return [("com.prediction.stack", cfg.stack), ("com.prediction.component", w.component)] + list(w.labels)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _object_name(prefix: str, key: str, content: str) -> str:
    """A Swarm secret's or config's name: the stack, what it is, and a hash of its content (they are
    immutable, so new content is a new object), within Docker's 64 characters."""
    return f"{f'{prefix}-{key}'[:53]}-{_digest(content)}"


def json_dumps(value) -> str:
    import json
    return json.dumps(value, sort_keys=True, default=str)


class EngineRuntime:
    """Containers on one Docker engine."""

    kind = "engine"

    def __init__(self, cfg: PlatformConfig):
        self.cfg = cfg

    def network(self, name: str, physical: str, internal: bool, opts: pulumi.ResourceOptions) -> docker.Network:
        return docker.Network(name, name=physical, driver="bridge", internal=internal,
                              labels=[docker.NetworkLabelArgs(label="com.prediction.stack", value=self.cfg.stack)],
                              opts=opts)

    def volume(self, name: str, physical: str, opts: pulumi.ResourceOptions) -> docker.Volume:
        return docker.Volume(name, name=physical, opts=opts)

    def discovery_name(self, host: str) -> str:
        """The DNS name that resolves to every instance of ``host`` (a network alias here)."""
        return host

    def run(self, w: Workload, opts: pulumi.ResourceOptions, container_name: pulumi.Input[str] | None = None,
            **extra) -> docker.Container:
        """One container of ``w`` (``container_name`` overrides ``w.host`` as its Docker name)."""
        env = list(w.env) + [pulumi.Output.format("{0}={1}", k, v) for k, v in sorted(w.secret_env.items())]
        if w.secret_env:
            env = [pulumi.Output.secret(e) if isinstance(e, pulumi.Output) else e for e in env]
        uploads = [docker.ContainerUploadArgs(file=f.path, content=pulumi.Output.secret(f.content) if f.secret
                                              else f.content, permissions=oct(f.mode)[2:].zfill(4)
                                              if f.secret else None)
                   for f in w.files]
        volumes, mounts = [], []
        for m in w.mounts:
            if m.bind_root:
                mounts.append(docker.ContainerMountArgs(type="bind", source="/", target=m.target, read_only=True))
            elif m.host_path:
                volumes.append(docker.ContainerVolumeArgs(host_path=m.host_path, container_path=m.target,
                                                          read_only=m.read_only or None))
            else:
                volumes.append(docker.ContainerVolumeArgs(
                    volume_name=m.volume.name if m.volume is not None else m.volume_name, container_path=m.target,
                    read_only=m.read_only or None))
        args = dict(
            name=container_name if container_name is not None else w.host,
            image=w.image,
            command=w.command,
            envs=env or None,
            uploads=uploads or None,
            volumes=volumes or None,
            mounts=mounts or None,
            networks_advanced=[docker.ContainerNetworksAdvancedArgs(name=n.name, aliases=aliases or None)
                               for n, aliases in w.networks],
            ports=[docker.ContainerPortArgs(internal=p.internal, external=p.external, ip=p.ip) for p in w.ports]
            or None,
            healthcheck=docker.ContainerHealthcheckArgs(tests=w.health.tests, interval=w.health.interval,
                                                        timeout=w.health.timeout, retries=w.health.retries,
                                                        start_period=w.health.start_period) if w.health else None,
            restart=w.restart,
            max_retry_count=w.max_retry_count if w.restart == "on-failure" else None,
            memory=w.memory_mb,
            # Swap limit = memory limit (no swap), set with it: Docker refuses an in-place memory update
            # (pulumi-docker's ContainerUpdate) that leaves the old swap limit below the new memory.
            memory_swap=w.memory_mb,
            cpus=None if w.cpus is None else f"{w.cpus:g}",
            stop_timeout=w.stop_timeout,
            destroy_grace_seconds=w.stop_grace_seconds,
            user=w.user,
            init=w.init,
            hostname=w.hostname,
            pid_mode="host" if w.pid_host else None,
            wait=w.wait and w.health is not None or None,
            wait_timeout=w.wait_timeout if w.wait and w.health is not None else None,
            labels=[docker.ContainerLabelArgs(label=k, value=v) for k, v in _labels(self.cfg, w)],
        )
        args.update(extra)
        return docker.Container(w.name, **{k: v for k, v in args.items() if v is not None}, opts=opts)

    def job(self, w: Workload, opts: pulumi.ResourceOptions) -> docker.Container:
        """A job that reports done by turning healthy and then idles (the migrate job)."""
        return self.run(w, opts)

    def toolbox(self, w: Workload, opts: pulumi.ResourceOptions) -> docker.Container:
        """A container operators exec into by its name (the ops toolbox)."""
        return self.run(w, opts)

    def per_node(self, w: Workload, opts: pulumi.ResourceOptions) -> docker.Container:
        """What runs once per machine (node-exporter): here the one engine's host."""
        return self.run(w, opts)

    def replicas(self, w: Workload, count: int, opts: pulumi.ResourceOptions) -> list[docker.Container]:
        """``count`` containers of ``w``: ``<host>-N`` each (its hostname, instance name and own alias),
        all answering on the alias ``w.host``.

        Each container's name adds a digest of the inputs whose change makes pulumi-docker replace it
        (its ForceNew inputs: resource_docker_container.go), so a replacement has a new name and can be
        created before the old one is deleted (``deleteBeforeReplace: false`` overrides the provider's
        delete-before-replace). Memory and the restart policy change in place: not in the digest. The
        healthcheck is (the provider would only record a new one; the container keeps its old)."""
        out = []
        for i in range(1, count + 1):
            alias = f"{w.host}-{i}"
            one = Workload(**{**w.__dict__, "name": f"{w.name}-{i}", "host": alias, "hostname": alias,
                              "env": list(w.env) + [f"PREDICTION_INSTANCE={alias}"],
                              "networks": [(n, [alias] + ([w.host] if n is w.networks[0][0] else []))
                                           for n, _ in w.networks],
                              "labels": list(w.labels) + [("com.prediction.instance", alias)]})
            replacing = {"hostname": alias, "stop_timeout": w.stop_timeout, "cpus": w.cpus,
                         "health": w.health.__dict__ if w.health else None,
                         "networks": [aliases for _, aliases in one.networks],
                         "mounts": [(m.target, m.volume_name or m.host_path, m.read_only) for m in w.mounts]}
            secrets = [pulumi.Output.from_input(v) for _, v in sorted(w.secret_env.items())]
            digest = pulumi.Output.unsecret(pulumi.Output.all(w.image, one.env, secrets).apply(
                lambda parts, r=replacing: _digest(json_dumps([parts, r, self.cfg.stack]))))
            out.append(self.run(one, pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(
                delete_before_replace=False)), container_name=pulumi.Output.concat(alias, "-", digest)))
        return out


class SwarmRuntime:
    """Services on a Docker Swarm (the manager the provider talks to: DOCKER_HOST or docker:host)."""

    kind = "swarm"
    SECRETS_DIR = "/run/secrets"

    def __init__(self, cfg: PlatformConfig):
        self.cfg = cfg
        self.engine = EngineRuntime(cfg)
        self._secrets: dict[str, docker.Secret] = {}
        self._configs: dict[str, docker.ServiceConfig] = {}

    def network(self, name: str, physical: str, internal: bool, opts: pulumi.ResourceOptions) -> docker.Network:
        o = self.cfg.orchestrator
        # attachable: the migrate job and the ops toolbox are plain containers on the manager.
        return docker.Network(name, name=physical, driver="overlay", internal=internal, attachable=True,
                              options={"encrypted": ""} if o.encryptOverlay else None,
                              labels=[docker.NetworkLabelArgs(label="com.prediction.stack", value=self.cfg.stack),
                                      docker.NetworkLabelArgs(label="com.docker.stack.namespace",
                                                              value=self.cfg.namePrefix)],
                              opts=opts)

    def volume(self, name: str, physical: str, opts: pulumi.ResourceOptions) -> None:
        """None: on a Swarm a named volume lives on the node a task runs on, and Docker creates it there
        when the task first mounts it (a docker.Volume would exist on the manager only). What must
        stay on one node (the database) is pinned there by a placement constraint."""
        return None

    def discovery_name(self, host: str) -> str:
        """``tasks.<service>``: every task's address, whatever the endpoint mode."""
        return f"tasks.{host}"

    # -- secrets and configs: immutable, so named by their content --------------------------------
    def _secret(self, key: str, value: pulumi.Input[str], opts: pulumi.ResourceOptions) -> docker.Secret:
        if key not in self._secrets:
            value = pulumi.Output.from_input(value)
            name = pulumi.Output.unsecret(value.apply(lambda v: _object_name(self.cfg.namePrefix, key, v)))
            data = pulumi.Output.secret(value.apply(lambda v: base64.b64encode(v.encode()).decode()))
            self._secrets[key] = docker.Secret(
                f"secret-{key}", name=name, data=data,
                labels=[docker.SecretLabelArgs(label="com.prediction.stack", value=self.cfg.stack)], opts=opts)
        return self._secrets[key]

    def _config(self, key: str, content: pulumi.Input[str], opts: pulumi.ResourceOptions) -> docker.ServiceConfig:
        if key not in self._configs:
            content = pulumi.Output.from_input(content)
            name = content.apply(lambda v: _object_name(self.cfg.namePrefix, key, v))
            data = content.apply(lambda v: base64.b64encode(v.encode()).decode())
            self._configs[key] = docker.ServiceConfig(f"config-{key}", name=name, data=data, opts=opts)
        return self._configs[key]

    @staticmethod
    def _key(path: str) -> str:
        """A config's name part from its path: /etc/nginx/nginx.conf -> nginx-conf (the last two parts)."""
        parts = path.strip("/").replace(" ", "-").replace(".", "-").lower().split("/")
        return "-".join(parts[-2:])

    # -- workloads ----------------------------------------------------------------------------------
    def toolbox(self, w: Workload, opts: pulumi.ResourceOptions) -> docker.Container:
        """The ops toolbox: a container on the manager (Ansible reaches it by name through the manager's
        engine), on the attachable overlay networks. It holds no secret."""
        return self.engine.run(w, opts)

    def job(self, w: Workload, opts: pulumi.ResourceOptions) -> docker.Service:
        """The migrate job: one task that migrates and then idles healthy; the provider waits for it to
        converge (healthy), and deletes a service whose create did not converge, so the next `pulumi up`
        creates it, i.e. runs the migration, again (resource_docker_service_funcs.go). Like every
        service here its task is started again whenever it ends (``_service``)."""
        return self.run(w, opts)

    def run(self, w: Workload, opts: pulumi.ResourceOptions) -> docker.Service:
        return self._service(w, 1, opts)

    def replicas(self, w: Workload, count: int, opts: pulumi.ResourceOptions) -> list[docker.Service]:
        """One service of ``count`` tasks; each task's instance name and hostname carry its slot."""
        one = Workload(**{**w.__dict__, "env": list(w.env) + ["PREDICTION_INSTANCE={{.Service.Name}}-{{.Task.Slot}}"],
                          "hostname": "{{.Service.Name}}-{{.Task.Slot}}"})
        return [self._service(one, count, opts)]

    def per_node(self, w: Workload, opts: pulumi.ResourceOptions) -> docker.Service:
        return self._service(w, None, opts)

    def _service(self, w: Workload, replicas: Optional[int], opts: pulumi.ResourceOptions) -> docker.Service:
        o = self.cfg.orchestrator
        env = {}
        for item in w.env:
            k, _, v = item.partition("=")
            env[k] = v
        secrets, configs = [], []
        for var, value in sorted(w.secret_env.items()):
            # per workload: two workloads may give the same variable different values (the owner's and
            # the application's database URL)
            key = f"{w.component}-{var.lower().replace('_', '-')}"
            secret = self._secret(key, value, opts)
            path = f"{self.SECRETS_DIR}/{var.lower()}"
            env[f"{var}{w.secret_file_suffix}"] = path
            secrets.append(docker.ServiceTaskSpecContainerSpecSecretArgs(
                secret_id=secret.id, secret_name=secret.name, file_name=path, file_mode=0o400,
                file_uid=str(w.secret_uid), file_gid=str(w.secret_uid)))
        for f in w.files:
            key = f"{w.component}-{self._key(f.path)}"
            if f.secret:
                secret = self._secret(key, f.content, opts)
                secrets.append(docker.ServiceTaskSpecContainerSpecSecretArgs(
                    secret_id=secret.id, secret_name=secret.name, file_name=f.path, file_mode=f.mode,
                    file_uid=str(f.uid), file_gid=str(f.uid)))
            else:
                config = self._config(key, f.content, opts)
                configs.append(docker.ServiceTaskSpecContainerSpecConfigArgs(
                    config_id=config.id, config_name=config.name, file_name=f.path, file_mode=f.mode,
                    file_uid=str(f.uid), file_gid=str(f.uid)))
        mounts = []
        for m in w.mounts:
            if m.bind_root:
                mounts.append(docker.ServiceTaskSpecContainerSpecMountArgs(type="bind", source="/", target=m.target,
                                                                           read_only=True))
            elif m.host_path:
                mounts.append(docker.ServiceTaskSpecContainerSpecMountArgs(type="bind", source=m.host_path,
                                                                           target=m.target, read_only=m.read_only))
            else:
                mounts.append(docker.ServiceTaskSpecContainerSpecMountArgs(
                    type="volume", source=m.volume_name, target=m.target, read_only=m.read_only))
        health = w.health
        # The update watches each new task for longer than a failing one takes to be marked unhealthy,
        # and rolls the whole update back when one fails (the old tasks serve meanwhile: start-first).
        monitor = f"{(health.seconds_to_fail() if health else 10) + 10}s"
        # No pause between tasks (Swarm's default): with start-first each new task is already healthy
        # before the next one starts, so a delay would only lengthen a roll-out.
        update = dict(parallelism=1, order=w.update_order, failure_action="rollback", monitor=monitor, delay="0s",
                      max_failure_ratio="0")
        resources = docker.ServiceTaskSpecResourcesArgs(
            limits=docker.ServiceTaskSpecResourcesLimitsArgs(
                nano_cpus=int(w.cpus * 1e9) if w.cpus else None,
                memory_bytes=w.memory_mb * 1024 * 1024 if w.memory_mb else None),
            reservation=docker.ServiceTaskSpecResourcesReservationArgs(
                nano_cpus=int(w.cpus_reserved * 1e9) if w.cpus_reserved else None,
                memory_bytes=w.memory_reserved_mb * 1024 * 1024 if w.memory_reserved_mb else None))
        container = docker.ServiceTaskSpecContainerSpecArgs(
            image=w.image,
            args=w.command,
            env=env or None,
            secrets=secrets or None,
            configs=configs or None,
            mounts=mounts or None,
            healthcheck=docker.ServiceTaskSpecContainerSpecHealthcheckArgs(
                tests=health.tests, interval=health.interval, timeout=health.timeout, retries=health.retries,
                start_period=health.start_period) if health else None,
            # The provider's delete waits at most this long for each task container on the manager to be
            # removed, and fails past it (deleteService): at least 15 s, for a slow node.
            stop_grace_period=f"{max(w.stop_grace_seconds, 15)}s",
            user=w.user,
            init=w.init,
            hostname=w.hostname,
            labels=[docker.ServiceTaskSpecContainerSpecLabelArgs(label=k, value=v) for k, v in _labels(self.cfg, w)],
        )
        return docker.Service(
            w.name,
            name=w.host,
            task_spec=docker.ServiceTaskSpecArgs(
                container_spec=container,
                networks_advanceds=[docker.ServiceTaskSpecNetworksAdvancedArgs(id=n.id, aliases=aliases or None)
                                    for n, aliases in w.networks],
                resources=resources,
                # "any", whatever the workload's engine restart policy: every service here is meant to
                # keep running, and under "on-failure" Swarm never replaces a task that exited 0
                # (swarmkit manager/orchestrator/restart/restart.go shouldRestart: TaskStateCompleted),
                # as one does when something other than Swarm stops it (its node's engine shutting
                # down: SIGTERM, a clean exit). The slot then stays empty: migrate 0/1 was seen so.
                restart_policy=docker.ServiceTaskSpecRestartPolicyArgs(condition="any", delay="5s"),
                placement=docker.ServiceTaskSpecPlacementArgs(constraints=w.constraints) if w.constraints else None,
            ),
            mode=docker.ServiceModeArgs(global_=True) if replicas is None
            else docker.ServiceModeArgs(replicated=docker.ServiceModeReplicatedArgs(replicas=replicas)),
            update_config=docker.ServiceUpdateConfigArgs(**update),
            rollback_config=docker.ServiceRollbackConfigArgs(parallelism=1, order=w.update_order, monitor=monitor,
                                                             failure_action="pause", delay="0s"),
            endpoint_spec=docker.ServiceEndpointSpecArgs(
                mode=o.endpointMode,
                ports=[docker.ServiceEndpointSpecPortArgs(target_port=p.internal, published_port=p.external,
                                                          publish_mode="host", protocol="tcp")
                       for p in w.ports] or None),
            # pulumi up waits until every task runs (or the update completed), and fails otherwise.
            converge_config=docker.ServiceConvergeConfigArgs(delay="2s", timeout=o.convergeTimeout)
            if replicas is not None else None,
            labels=[docker.ServiceLabelArgs(label=k, value=v) for k, v in _labels(self.cfg, w)]
            + [docker.ServiceLabelArgs(label="com.docker.stack.namespace", value=self.cfg.namePrefix)],
            # A fixed name: a replacement (a changed network, say) must remove the old service first.
            opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(delete_before_replace=True)),
        )


def runtime_for(cfg: PlatformConfig):
    """The runtime the stack file's ``orchestrator.kind`` names."""
    return SwarmRuntime(cfg) if cfg.orchestrator.kind == "swarm" else EngineRuntime(cfg)
