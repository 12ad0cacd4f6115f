"""A local Docker Swarm of N nodes on this machine's engine, for the `swarm` stack and its tests:
each node is a container running its own dockerd (image recipe stand_ins/swarm-node), node 1
initialises the Swarm, nodes 2..managers join as managers and the rest as workers.

On the host engine a swarm named ``<prefix>`` is, and ``down`` removes exactly this:
    containers  <prefix>-node-<N>     (hostname the same, so `docker node ls` shows it)
    volumes     <prefix>-node-<N>     the node's /var/lib/docker: its images and Swarm state
    networks    <prefix>-nodes        internal: Swarm traffic, on addresses pinned per node
                <prefix>-ports        only to publish node ports on 127.0.0.1 (an internal network
                                      publishes nothing)
    folders     <run_dir>/node-<N>/   the node engine's API socket (docker.sock), mounted in the node
Each carries the label ``com.prediction.swarm=<prefix>``; the node containers also carry what
``attach`` needs to describe the swarm again from another process (index, role); node labels
live in the Swarm itself.

Why so: a node's data is on a named volume because dockerd's overlay2 cannot use the container's
own overlay root, a tmpfs would hold every loaded image in memory (~2 GB per node for the stack),
and a named, labelled volume survives ``kill`` (a node that returns keeps its images and Swarm
state) and is found by ``down`` even when its container is gone. The engine API is a unix socket
(DOCKER_HOST=unix://…) rather than TCP: a TCP listener without TLS gives root on this machine to every
local user, and dockerd 20.10 delays its start by 15 s when asked for one. Addresses on the nodes'
network are pinned, so a node that restarts comes back on the address the Swarm knows it by.

This kernel has no IPVS: publish service ports with ``publish_mode="host"`` and use
``endpoint_mode="dnsrr"``; a port a task publishes on node N is reached from the host at
``swarm.address(N, port)``, for the ports named in ``up(ports=…)`` (a container's published ports
are fixed when it is created).
"""
from __future__ import annotations

import argparse
import grp
import ipaddress
import os
import queue
import re
import shutil
import sys
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

import docker
import docker.errors

from .ports import free_port
from .engine import engine_client
from .images import BASE_TAG, LOCAL_BUILD, RECIPE, Images, Recipe

ROOT = Path(__file__).resolve().parents[1]
NODE_IMAGE = "prediction-local/swarm-node:bookworm"
NODE_RECIPE = Recipe("swarm-node", ("bookworm",))
SWARM = "com.prediction.swarm"
NODE_INDEX = "com.prediction.swarm.node"
NODE_ROLE = "com.prediction.swarm.role"
NODE_ENGINE = "com.prediction.swarm.node-engine"  # a daemon label of each node's dockerd: its container
API_DIR = "/run/swarm-api"  # in the node; <run_dir>/node-<N> on the host
# What a dockerd needs from a container when --privileged is refused (measured on docker.io 20.10):
# every capability but SYS_RESOURCE, no seccomp/AppArmor filter, no masked or read-only /proc and
# /sys paths (set in _create), all devices, and its own cgroup namespace so the entrypoint can
# remount the cgroup tree read-write.
NODE_SECURITY = dict(cap_add=["ALL"], cap_drop=["SYS_RESOURCE"],
                     security_opt=["seccomp=unconfined", "apparmor=unconfined"],
                     device_cgroup_rules=["a *:* rwm"], cgroupns="private")
SWARM_PORT = 2377
SOCKET_PATH_MAX = 107  # sun_path holds 108 bytes with the terminating NUL


class SwarmError(Exception):
    """What stopped a swarm operation, naming the node or resource and what to do."""


def log(message: str) -> None:
    print(f"[swarm] {message}", file=sys.stderr, flush=True)


# -- the swarm ---------------------------------------------------------------------------------------
@dataclass
class Node:
    index: int
    name: str                 # container name and hostname
    role: str                 # "manager" or "worker", as the node was joined
    ip: str                   # on <prefix>-nodes: the Swarm advertise address
    socket: Path              # the node engine's API on the host

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket}"

    def client(self, timeout: int = 120) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.docker_host, timeout=timeout)


@dataclass
class Transfer:
    """What ``load_images`` moved: per node the references loaded and skipped (same id already there)."""
    loaded: dict[int, list[str]] = field(default_factory=dict)
    skipped: dict[int, list[str]] = field(default_factory=dict)
    tar_bytes: int = 0          # bytes of `docker save` output sent to each node (summed over distinct sets)
    seconds: float = 0.0        # wall time: save and the nodes' loads run together


@dataclass
class Swarm:
    prefix: str
    nodes: list[Node]
    run_dir: Path
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase of the up() that made it
    transfer: Transfer | None = None                          # the image load of that up()

    # -- where things are --------------------------------------------------------------------------
    def node(self, index: int) -> Node:
        for n in self.nodes:
            if n.index == index:
                return n
        raise SwarmError(f"swarm {self.prefix} has no node {index} (nodes 1..{len(self.nodes)})")

    @property
    def manager(self) -> Node:
        return self.nodes[0]

    @property
    def docker_host(self) -> str:
        """DOCKER_HOST of the first manager's engine: `docker service ls` and the Swarm API."""
        return self.manager.docker_host

    def client(self, timeout: int = 120) -> docker.DockerClient:
        return self.manager.client(timeout)

    def env(self) -> dict[str, str]:
        return {"DOCKER_HOST": self.docker_host}

    def address(self, index: int, port: int) -> tuple[str, int]:
        """("127.0.0.1", host port) at which the host reaches TCP ``port`` of node ``index`` — where a
        task publishing ``port`` in host mode on that node answers."""
        node = self.node(index)
        bindings = (_host().containers.get(node.name).attrs["HostConfig"]["PortBindings"] or {}).get(f"{port}/tcp")
        if not bindings:
            raise SwarmError(f"port {port} of {node.name} is not published on the host; "
                             f"name it in up(ports=…) when the swarm is created")
        return bindings[0]["HostIp"] or "127.0.0.1", int(bindings[0]["HostPort"])

    def url(self, index: int, port: int, scheme: str = "http") -> str:
        host, host_port = self.address(index, port)
        return f"{scheme}://{host}:{host_port}"

    # -- what the Swarm says -----------------------------------------------------------------------
    def states(self) -> dict[int, dict]:
        """Per node index, as the first manager sees it: id, state ("ready", "down", …), availability,
        role and labels. A node that left and joined anew is listed by its newest entry."""
        by_name = {n.name: n.index for n in self.nodes}
        out: dict[int, dict] = {}
        for entry in sorted(self.client().nodes.list(), key=lambda e: e.attrs["CreatedAt"]):
            # A node that has just joined may be listed before its description (hostname) is filled in.
            index = by_name.get((entry.attrs.get("Description") or {}).get("Hostname"))
            if index is not None:
                spec = entry.attrs["Spec"]
                out[index] = {"id": entry.id, "state": entry.attrs["Status"]["State"],
                              "availability": spec["Availability"], "role": spec["Role"],
                              "labels": spec.get("Labels") or {}}
        return out

    def wait(self, condition: Callable[[dict[int, dict]], bool], what: str, timeout: float = 90) -> float:
        """Poll ``states()`` until ``condition`` holds; seconds it took. Raises SwarmError naming ``what``."""
        started = time.monotonic()
        last: object = None
        while True:
            try:
                last = self.states()
                if condition(last):
                    return time.monotonic() - started
            except (docker.errors.APIError, docker.errors.DockerException) as exc:
                last = exc
            if time.monotonic() - started > timeout:
                raise SwarmError(f"swarm {self.prefix}: {what} not reached in {timeout:.0f}s; last seen: {last}")
            time.sleep(0.5)

    def wait_ready(self, timeout: float = 90) -> float:
        return self.wait(lambda s: len(s) == len(self.nodes) and all(v["state"] == "ready" for v in s.values()),
                         f"all {len(self.nodes)} nodes ready", timeout)

    # -- node loss and return ----------------------------------------------------------------------
    def kill(self, index: int) -> None:
        """`docker kill` the node: its dockerd and every task on it die at once, as in a power cut.
        The manager marks it down after about three heartbeats (``up(heartbeat=…)``)."""
        _host().containers.get(self.node(index).name).kill()

    def restart(self, index: int, timeout: float = 90) -> float:
        """Stop the node cleanly (its dockerd stops its tasks) and start it again, as a reboot;
        seconds until the manager sees it, and every other running node, ready again."""
        started = time.monotonic()
        node = self.node(index)
        _host().containers.get(node.name).restart(timeout=30)
        _wait_engine(node, timeout)
        _wait_member(node, timeout)
        self._wait_running_ready(f"{node.name} ready after restart", timeout)
        return time.monotonic() - started

    def rejoin(self, index: int, fresh: bool = False, timeout: float = 90) -> float:
        """Bring a killed (or stopped) node back; seconds until the manager sees it, and every other
        running node, ready.
        By default the node starts again with its own data, as a machine that returns: it resumes
        its Swarm membership under the same node id, with its labels. ``fresh=True`` replaces it
        instead: the node leaves, its old entry is removed on the manager, it joins under a new id
        and gets the old entry's labels (its images stay)."""
        started = time.monotonic()
        node = self.node(index)
        container = _host().containers.get(node.name)
        if container.status != "running":
            container.start()
        _wait_engine(node, timeout)
        if fresh:
            if node.index == 1:
                raise SwarmError("node 1 initialised the Swarm: it cannot leave and rejoin it; restart it instead")
            old = self.states().get(index, {})
            node.client().swarm.leave(force=True)
            if old:
                self.client().api.remove_node(old["id"], force=True)  # --force: also while it still shows ready
            _join(self, node)
            _set_labels(self, index, old.get("labels", {}))
        _wait_member(node, timeout)
        if not fresh:
            _wait_ready_restarting_stuck(self, [node], timeout)
        self._wait_running_ready(f"{node.name} ready after rejoining", timeout)
        return time.monotonic() - started

    def _wait_running_ready(self, what: str, timeout: float) -> None:
        """Every node whose container runs is ready: after a manager returns, the workers show
        "unknown" until their next heartbeat reaches it."""
        host = _host()
        running = {n.index for n in self.nodes if host.containers.get(n.name).status == "running"}
        self.wait(lambda s: all(s.get(i, {}).get("state") == "ready" for i in running), what, timeout)

    def drain(self, index: int) -> None:
        """Availability drain: the Swarm moves the node's tasks elsewhere and places none there."""
        self._availability(index, "drain")

    def activate(self, index: int) -> None:
        self._availability(index, "active")

    def _availability(self, index: int, availability: str) -> None:
        entry = self.client().nodes.get(self.states()[index]["id"])
        spec = dict(entry.attrs["Spec"], Availability=availability)
        entry.update(spec)

    # -- images ------------------------------------------------------------------------------------
    def load_images(self, refs: Iterable[str], nodes: Iterable[int] | None = None) -> Transfer:
        """Copy images from the host engine into every node (or ``nodes``): one `docker save` per
        distinct set of missing images (layers the images share travel once), streamed into
        `docker load` on those nodes at once; an image a node already has under the same id is skipped."""
        return _load_images(self, list(dict.fromkeys(refs)), [self.node(i) for i in (nodes or
                                                                                   [n.index for n in self.nodes])])

    def memory_mib(self) -> dict[int, float]:
        """Memory each node container uses (its dockerd, containerd and tasks; page cache excluded)."""
        out = {}
        for n in self.nodes:
            stats = _host().containers.get(n.name).stats(stream=False)["memory_stats"]
            cache = stats.get("stats", {}).get("total_inactive_file", stats.get("stats", {}).get("inactive_file", 0))
            out[n.index] = (stats.get("usage", 0) - cache) / 2**20
        return out


# -- up / attach / down -------------------------------------------------------------------------------
def up(name_prefix: str, nodes: int = 3, managers: int = 1, labels: Mapping[int, Mapping[str, str]] | None = None,
       images: Iterable[str] = (), ports: Iterable[int] = (), fixed_ports: Mapping[int, Mapping[int, int]] | None = None,
       run_dir: Path | None = None, heartbeat: float = 5.0, timeout: float = 120,
       binds: Mapping[str, str] | None = None) -> Swarm:
    """A running swarm ``name_prefix`` of ``nodes`` nodes, the first ``managers`` of them managers,
    with node labels ``labels`` ({node index: {label: value}}, exactly these on each node) and the
    host engine's ``images`` loaded into every node. ``ports``: node TCP ports published on
    127.0.0.1 on every node, each on a free host port unless ``fixed_ports`` ({node: {port: host
    port}}) names one. ``binds``: host folder -> path in every node, read-only (what a real cluster's
    nodes would each have, e.g. the models). ``heartbeat``: seconds between a node's heartbeats (Docker's default 5; a node
    is marked down after about three missed ones). The socket folders go under ``run_dir``
    (default var/swarm/<prefix>).

    Idempotent: when the swarm exists with the same nodes and ports, stopped nodes are started,
    labels set and missing images loaded. When this call created the swarm and fails, everything
    it made is removed before the error is raised."""
    labels = {int(k): dict(v) for k, v in (labels or {}).items()}
    ports = sorted(set(int(p) for p in ports))
    fixed = {int(i): {int(p): int(h) for p, h in m.items()} for i, m in (fixed_ports or {}).items()}
    run_dir = Path(run_dir) if run_dir else ROOT / "var/swarm" / name_prefix
    _check(name_prefix, nodes, managers, labels, ports, fixed, run_dir)

    where = os.environ.get("DOCKER_HOST", "")
    if where and not re.match(r"(unix://|tcp://(127\.0\.0\.1|localhost)[:/])", where):
        raise SwarmError(f"DOCKER_HOST={where}: the swarm's nodes need the engine on this machine (their API "
                         f"sockets are folders here, their ports on this loopback); unset DOCKER_HOST")
    host = _host()
    timings: dict[str, float] = {}
    started = time.monotonic()
    if _containers(host, name_prefix):
        swarm = attach(name_prefix)
        _check_same(swarm, nodes, managers, ports, fixed, run_dir)
        timings["resume"] = _timed(lambda: _resume(swarm, labels, timeout))
        swarm.transfer = _timed_value(timings, "images", lambda: swarm.load_images(images))
        timings["total"] = time.monotonic() - started
        swarm.timings = timings
        return swarm

    try:
        timings["node_image"] = _timed(lambda: node_image(host))
        swarm = _timed_value(timings, "containers",
                             lambda: _create(host, name_prefix, nodes, managers, ports, fixed, run_dir,
                                             dict(binds or {})))
        timings["engines"] = _timed(lambda: _each(swarm.nodes, lambda n: _wait_engine(n, timeout)))
        timings["swarm"] = _timed(lambda: _form(swarm, heartbeat, timeout))
        timings["labels"] = _timed(lambda: _apply_labels(swarm, labels))
        swarm.transfer = _timed_value(timings, "images", lambda: swarm.load_images(images))
    except BaseException as exc:
        log(f"up {name_prefix} failed ({exc.__class__.__name__}): removing what it made")
        down(name_prefix, run_dir=run_dir)
        if isinstance(exc, SwarmError):
            raise
        if isinstance(exc, (docker.errors.DockerException, OSError)):
            raise SwarmError(f"swarm {name_prefix} not started: {exc}") from exc
        raise
    timings["total"] = time.monotonic() - started
    swarm.timings = timings
    return swarm


def attach(name_prefix: str) -> Swarm:
    """The swarm ``name_prefix`` as its node containers on the host engine describe it."""
    host = _host()
    containers = _containers(host, name_prefix)
    if not containers:
        raise SwarmError(f"no swarm {name_prefix}: no container labelled {SWARM}={name_prefix}; "
                         f"swarm_nodes.up({name_prefix!r}) makes one")
    nodes = []
    for c in containers:
        lab = c.labels
        api_dir = next(m["Source"] for m in c.attrs["Mounts"] if m["Destination"] == API_DIR)
        # the pinned address, also known while the node is stopped
        ip = (c.attrs["NetworkSettings"]["Networks"].get(f"{name_prefix}-nodes", {}).get("IPAMConfig")
              or {}).get("IPv4Address", "")
        nodes.append(Node(int(lab[NODE_INDEX]), c.name, lab[NODE_ROLE], ip, Path(api_dir) / "docker.sock"))
    nodes.sort(key=lambda n: n.index)
    return Swarm(name_prefix, nodes, nodes[0].socket.parent.parent)


def down(name_prefix: str, run_dir: Path | None = None) -> list[str]:
    """Remove everything swarm ``name_prefix`` has on the host engine (containers, networks,
    volumes, by label) and its socket folders; what was removed. Nothing there is not an error."""
    host = _host()
    removed: list[str] = []
    dirs = {Path(run_dir) if run_dir else ROOT / "var/swarm" / name_prefix}
    for c in _containers(host, name_prefix):
        for m in c.attrs["Mounts"]:
            if m["Destination"] == API_DIR:
                dirs.add(Path(m["Source"]).parent)
        c.remove(force=True)
        removed.append(f"container {c.name}")
    selector = {"label": f"{SWARM}={name_prefix}"}
    for net in host.networks.list(filters=selector):
        _retry(net.remove, f"network {net.name}")
        removed.append(f"network {net.name}")
    for vol in host.volumes.list(filters=selector):
        _retry(vol.remove, f"volume {vol.name}")
        removed.append(f"volume {vol.name}")
    for d in dirs:
        for sub in d.glob("node-*"):
            if sub.is_dir() and re.fullmatch(r"node-\d+", sub.name):
                shutil.rmtree(sub)
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
            removed.append(f"folder {d}")
    return removed


# -- the node image -----------------------------------------------------------------------------------
def node_image(client: docker.DockerClient) -> str:
    """Id of the node image on the host engine, built from stand_ins/swarm-node when missing or stale
    (with images.py's labels, so a changed recipe is rebuilt)."""
    images = Images(client)
    base = images.ensure_base()
    digest = Images._digest(NODE_RECIPE, base)
    try:
        present = client.images.get(NODE_IMAGE)
        if (present.labels or {}).get(RECIPE) == digest:
            return present.id
    except docker.errors.ImageNotFound:
        pass
    return images._build(NODE_IMAGE, {"BASE": BASE_TAG}, {LOCAL_BUILD: NODE_IMAGE, RECIPE: digest},
                         context=images._context(NODE_RECIPE))


# -- how up() works -----------------------------------------------------------------------------------
_hosts: dict[str, docker.DockerClient] = {}


def _host() -> docker.DockerClient:
    """The engine the nodes run on (DOCKER_HOST, else the local socket) — never a node's own engine,
    which is what DOCKER_HOST names after sourcing a swarm stack's env file."""
    where = os.environ.get("DOCKER_HOST", "")
    if where not in _hosts:
        client = engine_client()
        node = next((label.split("=", 1)[1] for label in client.info().get("Labels") or []
                     if label.startswith(f"{NODE_ENGINE}=")), None)
        if node:
            raise SwarmError(f"DOCKER_HOST={where} is the engine inside swarm node {node}, not the engine the "
                             f"nodes run on: unset DOCKER_HOST (or point it at the host engine)")
        _hosts[where] = client
    return _hosts[where]


def _containers(host: docker.DockerClient, prefix: str) -> list:
    found = host.containers.list(all=True, filters={"label": f"{SWARM}={prefix}"})
    return sorted(found, key=lambda c: int(c.labels.get(NODE_INDEX, 0)))


def _check(prefix: str, nodes: int, managers: int, labels: dict, ports: list, fixed: dict, run_dir: Path) -> None:
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,40}", prefix):
        raise SwarmError(f"swarm name prefix {prefix!r}: use 1-41 of a-z, 0-9 and '-' (it names containers "
                         f"and hostnames)")
    if nodes < 1 or not 1 <= managers <= nodes:
        raise SwarmError(f"nodes={nodes}, managers={managers}: need 1 <= managers <= nodes")
    for index in [*labels, *fixed]:
        if not 1 <= index <= nodes:
            raise SwarmError(f"node {index} named in labels/fixed_ports does not exist (nodes 1..{nodes})")
    for index, mapping in fixed.items():
        for port in mapping:
            if port not in ports:
                raise SwarmError(f"fixed_ports names node {index} port {port}, which is not in ports {ports}")
    sock = run_dir.resolve() / f"node-{nodes}" / "docker.sock"
    if len(str(sock)) > SOCKET_PATH_MAX:
        raise SwarmError(f"the node sockets would be at {sock} ({len(str(sock))} characters; unix sockets allow "
                         f"{SOCKET_PATH_MAX}): pass a shorter run_dir")


def _check_same(swarm: Swarm, nodes: int, managers: int, ports: list, fixed: dict, run_dir: Path) -> None:
    have = [(n.index, n.role) for n in swarm.nodes]
    want = [(i, "manager" if i <= managers else "worker") for i in range(1, nodes + 1)]
    host = _host()
    published = sorted({int(p.split("/")[0]) for n in swarm.nodes
                        for p in (host.containers.get(n.name).attrs["HostConfig"]["PortBindings"] or {})})
    wrong = []
    if have != want:
        wrong.append(f"nodes {have} (asked {want})")
    if published != ports:
        wrong.append(f"published ports {published} (asked {ports})")
    for index, mapping in fixed.items():
        for port, host_port in mapping.items():
            if swarm.address(index, port)[1] != host_port:
                wrong.append(f"node {index} port {port} on {swarm.address(index, port)[1]} (asked {host_port})")
    if swarm.run_dir.resolve() != run_dir.resolve():
        wrong.append(f"run_dir {swarm.run_dir} (asked {run_dir})")
    if wrong:
        raise SwarmError(f"swarm {swarm.prefix} exists with {'; '.join(wrong)}: "
                         f"swarm_nodes.down({swarm.prefix!r}) first to make it anew")


def _resume(swarm: Swarm, labels: dict, timeout: float) -> None:
    """An existing swarm brought to what up() declares: every node running and ready, labels set."""
    host = _host()
    for n in swarm.nodes:
        c = host.containers.get(n.name)
        if c.status != "running":
            c.start()
    _each(swarm.nodes, lambda n: (_wait_engine(n, timeout), _wait_member(n, timeout)))
    _wait_ready_restarting_stuck(swarm, swarm.nodes, timeout)
    _apply_labels(swarm, labels)


# Seen under load: a worker killed and started again at once reconnects (its own engine says
# "active") while the manager keeps listing it as down for minutes. Restarting its dockerd once
# registers it again, as an operator would do on a real machine.
STUCK_DOWN_SECONDS = 30


def _wait_ready_restarting_stuck(swarm: Swarm, nodes: list[Node], timeout: float) -> None:
    """Each of ``nodes`` ready; any still not ready after STUCK_DOWN_SECONDS gets its node
    container (and so its dockerd) restarted once, then the full timeout applies."""
    def ready(limit: float) -> None:
        swarm.wait(lambda st: all(st.get(n.index, {}).get("state") == "ready" for n in nodes),
                   f"{', '.join(n.name for n in nodes)} ready", limit)
    try:
        ready(min(STUCK_DOWN_SECONDS, timeout))
        return
    except SwarmError:
        pass
    states = swarm.states()
    stuck = [n for n in nodes if states.get(n.index, {}).get("state") != "ready"]
    for n in stuck:
        print(f"[swarm] {n.name}: {states.get(n.index, {}).get('state', 'unlisted')} on the manager "
              f"{STUCK_DOWN_SECONDS}s after it reconnected; restarting its engine", file=sys.stderr, flush=True)
        _host().containers.get(n.name).restart(timeout=10)
        _wait_engine(n, timeout)
        _wait_member(n, timeout)
    ready(timeout)


def _nodes_network(host, prefix: str, mark: dict):
    """The internal network with a subnet named in its config, which pinning addresses needs: the
    one the engine picks (free of its other networks and the host's routes), then asked for by
    name; again if another network took it in between (the engine is shared)."""
    for attempt in range(3):
        probe = host.networks.create(f"{prefix}-nodes", driver="bridge", internal=True, labels=mark)
        subnet = probe.attrs["IPAM"]["Config"][0]["Subnet"]
        probe.remove()
        ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=subnet)])
        try:
            return host.networks.create(f"{prefix}-nodes", driver="bridge", internal=True, ipam=ipam, labels=mark)
        except docker.errors.APIError as exc:
            if attempt == 2 or "overlap" not in str(exc):
                raise


def _create(host, prefix: str, nodes: int, managers: int, ports: list, fixed: dict, run_dir: Path,
            binds: dict | None = None) -> Swarm:
    mark = {SWARM: prefix}
    nodes_net = _nodes_network(host, prefix, mark)
    ports_net = host.networks.create(f"{prefix}-ports", driver="bridge", labels=mark)
    hosts = list(ipaddress.ip_network(nodes_net.attrs["IPAM"]["Config"][0]["Subnet"]).hosts())  # .1: the gateway
    socket_gid = _socket_gid()
    taken = {h for m in fixed.values() for h in m.values()}
    made = []
    for index in range(1, nodes + 1):
        name = f"{prefix}-node-{index}"
        role = "manager" if index <= managers else "worker"
        api_dir = run_dir.resolve() / f"node-{index}"
        api_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        _chgrp(api_dir, socket_gid)
        host.volumes.create(name, labels=mark)
        api = host.api
        host_config = api.create_host_config(
            port_bindings={f"{p}/tcp": ("127.0.0.1", fixed.get(index, {}).get(p) or _free_port(taken)) for p in ports},
            mounts=[docker.types.Mount("/var/lib/docker", name, type="volume"),
                    docker.types.Mount(API_DIR, str(api_dir), type="bind")]
            + [docker.types.Mount(target, str(Path(source).resolve()), type="bind", read_only=True)
               for source, target in sorted((binds or {}).items())],
            # a fresh /run at every start: a pid file or containerd socket left by a killed dockerd
            # (pid 1 again) would stop the new one
            tmpfs={"/run": "", "/tmp": ""},
            network_mode=ports_net.name,
            log_config=docker.types.LogConfig(type="json-file", config={"max-size": "10m", "max-file": "2"}),
            **NODE_SECURITY)
        # `--security-opt systempaths=unconfined` is the CLI's word for these two, which docker-py
        # has no argument for: nothing under /proc or /sys masked or read-only.
        host_config.update(MaskedPaths=[], ReadonlyPaths=[])
        created = api.create_container(
            NODE_IMAGE, name=name, hostname=name, detach=True, host_config=host_config,
            command=[f"--host=unix://{API_DIR}/docker.sock", f"--group={socket_gid}", f"--label={NODE_ENGINE}={name}"],
            ports=[(p, "tcp") for p in ports], stop_signal="SIGTERM",
            labels={**mark, NODE_INDEX: str(index), NODE_ROLE: role})
        ip = str(hosts[index])
        nodes_net.connect(created["Id"], ipv4_address=ip)
        made.append(Node(index, name, role, ip, api_dir / "docker.sock"))
    for n in made:
        host.containers.get(n.name).start()
    return Swarm(prefix, made, run_dir.resolve())


def _form(swarm: Swarm, heartbeat: float, timeout: float) -> None:
    first = swarm.manager.client()
    first.swarm.init(advertise_addr=swarm.manager.ip, listen_addr=f"0.0.0.0:{SWARM_PORT}",
                     dispatcher_heartbeat_period=int(heartbeat * 1e9))
    # Managers one at a time (each joins the Raft group, which must agree); workers together.
    for n in swarm.nodes[1:]:
        if n.role == "manager":
            _join(swarm, n)
    _each([n for n in swarm.nodes if n.role == "worker"], lambda n: _join(swarm, n))
    swarm.wait_ready(timeout)


def _join(swarm: Swarm, node: Node) -> None:
    mgr = swarm.client()
    mgr.swarm.reload()
    token = mgr.swarm.attrs["JoinTokens"]["Manager" if node.role == "manager" else "Worker"]
    node.client().swarm.join(remote_addrs=[f"{swarm.manager.ip}:{SWARM_PORT}"], join_token=token,
                             listen_addr=f"0.0.0.0:{SWARM_PORT}", advertise_addr=node.ip)


def _apply_labels(swarm: Swarm, labels: Mapping[int, Mapping[str, str]]) -> None:
    """Every node's labels exactly as declared (none where none are)."""
    states = swarm.states()
    for n in swarm.nodes:
        if states[n.index]["labels"] != dict(labels.get(n.index, {})):
            _set_labels(swarm, n.index, labels.get(n.index, {}), states[n.index]["id"])


def _set_labels(swarm: Swarm, index: int, labels: Mapping[str, str], node_id: str | None = None) -> None:
    entry = swarm.client().nodes.get(node_id or swarm.states()[index]["id"])
    entry.update(dict(entry.attrs["Spec"], Labels=dict(labels)))


def _wait_engine(node: Node, timeout: float) -> None:
    """Until the node's dockerd answers on its socket; the node's log tail if it stopped instead."""
    started = time.monotonic()
    while True:
        if node.socket.exists():
            try:
                node.client(timeout=5).ping()
                return
            except (docker.errors.DockerException, OSError):
                pass
        container = _host().containers.get(node.name)
        if container.status not in ("running", "created", "restarting"):
            tail = container.logs(tail=8).decode(errors="replace").strip()
            raise SwarmError(f"{node.name}'s dockerd stopped (container {container.status}): {tail}")
        if time.monotonic() - started > timeout:
            tail = container.logs(tail=8).decode(errors="replace").strip()
            raise SwarmError(f"{node.name}'s dockerd does not answer at {node.socket} after {timeout:.0f}s: {tail}")
        time.sleep(0.2)


def _wait_member(node: Node, timeout: float) -> None:
    """Until the node itself says it is connected to the Swarm (the manager may still list it as
    ready from before it went away)."""
    started = time.monotonic()
    while (state := node.client().info()["Swarm"]["LocalNodeState"]) != "active":
        if time.monotonic() - started > timeout:
            raise SwarmError(f"{node.name} is not back in the Swarm after {timeout:.0f}s (its state: {state})")
        time.sleep(0.2)


def _load_images(swarm: Swarm, refs: list[str], nodes: list[Node]) -> Transfer:
    host = _host()
    transfer = Transfer()
    if not refs:
        return transfer
    want = {}
    for ref in refs:
        try:
            want[ref] = host.images.get(ref).id
        except docker.errors.ImageNotFound:
            raise SwarmError(f"image {ref} is not on the host engine: build or load it there first") from None
    missing: dict[tuple[str, ...], list[Node]] = {}
    for n in nodes:
        client = n.client()
        lacking = tuple(ref for ref in refs if _image_id(client, ref) != want[ref])
        transfer.loaded[n.index] = list(lacking)
        transfer.skipped[n.index] = [ref for ref in refs if ref not in lacking]
        if lacking:
            missing.setdefault(lacking, []).append(n)
    started = time.monotonic()
    for group, group_nodes in missing.items():
        try:
            transfer.tar_bytes += _stream(host, list(group), group_nodes, want, thin=True)
        except _ThinLoadFailed:  # a node no longer had a layer it loaded before: send everything
            _LAYERS.forget(group_nodes)
            transfer.tar_bytes += _stream(host, list(group), group_nodes, want, thin=False)
    transfer.seconds = time.monotonic() - started
    return transfer


class _ThinLoadFailed(SwarmError):
    """A load without the layers a node was recorded to have failed."""


class _LoadedLayers:
    """Per node engine, the layer folders of the `docker save` archives it has loaded. A later archive
    leaves those folders out: `docker load` opens a layer's file only when the engine lacks the layer's
    chain (moby image/tarexport/load.go, Load: `l.lss.Get(r.ChainID())` before `loadLayer`), and
    a folder's name is the layer's v1 id, a digest of its chain id and its parent's (image/v1
    CreateID), so the same name means the same chain. Images built FROM one another (the ops image
    on the service image, a new service tag on the old) then travel as their new layers only. Kept
    per engine ID (a node recreated on a fresh volume is a new engine) for this process only; a load
    that fails without them is sent again whole."""

    def __init__(self):
        self._lock = threading.Lock()
        self._by_engine: dict[str, set[str]] = {}

    def common(self, nodes: list[Node]) -> set[str]:
        engines = [_engine_id(n) for n in nodes]  # API calls, outside the lock
        with self._lock:
            sets = [set(self._by_engine.get(e, ())) for e in engines]
        return set.intersection(*sets) if sets else set()

    def add(self, nodes: list[Node], folders: set[str]) -> None:
        engines = [_engine_id(n) for n in nodes]
        with self._lock:
            for e in engines:
                self._by_engine.setdefault(e, set()).update(folders)

    def forget(self, nodes: list[Node]) -> None:
        engines = [_engine_id(n) for n in nodes]
        with self._lock:
            for e in engines:
                self._by_engine.pop(e, None)


_LAYERS = _LoadedLayers()


def _engine_id(node: Node) -> str:
    return node.client(timeout=30).info()["ID"]


class _Feed:
    """One node's share of the `docker save` stream: a bounded queue its `docker load` request
    reads as its body (chunked), so the slowest node paces the save and nothing is buffered whole."""
    DONE = object()

    def __init__(self, node: Node):
        self.node = node
        self.queue: queue.Queue = queue.Queue(maxsize=16)
        self.failed: BaseException | None = None

    def body(self):
        while (chunk := self.queue.get()) is not self.DONE:
            yield chunk

    def put(self, chunk) -> None:
        while self.failed is None:  # a node whose load failed reads no more; drop its share
            try:
                self.queue.put(chunk, timeout=1)
                return
            except queue.Full:
                continue

    def load(self, refs: list[str], want: dict[str, str]) -> None:
        client = self.node.client(timeout=900)
        try:
            for message in client.api.load_image(self.body()):
                if "error" in message:
                    raise SwarmError(f"docker load into {self.node.name} failed: {message['error']}")
            for ref in refs:
                if _image_id(client, ref) != want[ref]:
                    raise SwarmError(f"{ref} on {self.node.name} is not {want[ref]} after docker load")
        except BaseException as exc:
            self.failed = exc if isinstance(exc, SwarmError) else SwarmError(
                f"docker load into {self.node.name} failed: {exc}")


def _stream(host: docker.DockerClient, refs: list[str], nodes: list[Node], want: dict[str, str],
            thin: bool) -> int:
    """`docker save ref…` from the host engine piped into `docker load` on every node at once: one
    archive in which layers shared by the images travel once; with ``thin``, without the layer
    folders every one of these nodes has loaded before (_LoadedLayers). Returns the bytes sent to each
    node. (docker-py's get_image takes one name; the API's /images/get takes several.)"""
    have = _LAYERS.common(nodes) if thin else set()
    feeds = [_Feed(n) for n in nodes]
    threads = [threading.Thread(target=f.load, args=(refs, want), daemon=True) for f in feeds]
    for t in threads:
        t.start()
    out = _FanOut(feeds)
    folders: set[str] = set()
    thinned = False
    try:
        api = host.api
        res = api._get(api._url("/images/get"), params={"names": refs}, stream=True)
        api._raise_for_status(res)
        # Read and written as tar streams: nothing of the archive is held whole.
        with tarfile.open(fileobj=res.raw, mode="r|", bufsize=1 << 20) as src, \
                tarfile.open(fileobj=out, mode="w|", bufsize=1 << 20, format=tarfile.PAX_FORMAT) as dst:
            dst.copybufsize = 1 << 20
            for member in src:
                folder = member.name.split("/", 1)[0] if member.isdir() or "/" in member.name else None
                if folder is not None:
                    folders.add(folder)
                    if folder in have:
                        thinned = True
                        continue
                dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    finally:
        for f in feeds:
            f.put(_Feed.DONE)
        for t in threads:
            t.join()
    failed = [f.failed for f in feeds if f.failed is not None]
    if failed:
        if thinned:
            raise _ThinLoadFailed(str(failed[0]))
        raise failed[0]
    _LAYERS.add(nodes, folders)
    return out.size


class _FanOut:
    """A write-only file whose bytes go to every node's feed."""

    def __init__(self, feeds: list[_Feed]):
        self.feeds = feeds
        self.size = 0

    def write(self, data) -> int:
        chunk = bytes(data)
        self.size += len(chunk)
        for f in self.feeds:
            f.put(chunk)
        return len(chunk)


def _image_id(client: docker.DockerClient, ref: str) -> str | None:
    try:
        return client.images.get(ref).id
    except docker.errors.ImageNotFound:
        return None


def _free_port(taken: set[int]) -> int:
    """A free loopback port not handed out already in this up()."""
    while (port := free_port()) in taken:
        pass
    taken.add(port)
    return port


def _socket_gid() -> int:
    """Group of the node sockets: the host's docker group, so whoever may use the host engine may
    use the nodes' (the node image has its own docker group, whose id means nothing here)."""
    try:
        return grp.getgrnam("docker").gr_gid
    except KeyError:
        return os.getgid()


def _chgrp(path: Path, gid: int) -> None:
    try:
        os.chown(path, -1, gid)
    except PermissionError:
        pass


def _each(items: list, fn: Callable) -> None:
    """``fn`` on every item in parallel threads; the first error is raised after all finished."""
    if len(items) <= 1:
        for item in items:
            fn(item)
        return
    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        futures = [pool.submit(fn, item) for item in items]
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise errors[0]


def _retry(fn: Callable, what: str, attempts: int = 20) -> None:
    for attempt in range(attempts):
        try:
            fn()
            return
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            if attempt == attempts - 1 or exc.status_code != 409:  # in use: a container still going
                raise SwarmError(f"cannot remove {what}: {exc}") from exc
            time.sleep(0.5)


def _timed(fn: Callable) -> float:
    started = time.monotonic()
    fn()
    return time.monotonic() - started


def _timed_value(timings: dict, key: str, fn: Callable):
    started = time.monotonic()
    value = fn()
    timings[key] = time.monotonic() - started
    return value


# -- `python -m stack_emulator.swarm_nodes up|down|status PREFIX` -----------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack_emulator.swarm_nodes",
                                     description="A local Docker Swarm whose nodes are containers on this engine.")
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("prefix")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--managers", type=int, default=1)
    parser.add_argument("--image", action="append", default=[], help="host image to load into every node")
    parser.add_argument("--port", type=int, action="append", default=[], help="node port to publish on 127.0.0.1")
    args = parser.parse_args(argv)
    try:
        if args.action == "down":
            for line in down(args.prefix):
                print(f"removed {line}")
            return 0
        swarm = (up(args.prefix, args.nodes, args.managers, images=args.image, ports=args.port)
                 if args.action == "up" else attach(args.prefix))
    except SwarmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"DOCKER_HOST={swarm.docker_host}")
    for index, state in swarm.states().items():
        node = swarm.node(index)
        print(f"{node.name} {state['role']} {state['state']} {state['availability']} {node.ip} {state['labels']}")
    if swarm.timings:
        print("timings " + " ".join(f"{k}={v:.1f}s" for k, v in swarm.timings.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
