"""`make stack-up|stack-preview|stack-down|stack-status`: one stack of this repository on a Docker
engine, changed the way `pulumi up` changes it, without the Pulumi CLI.

``up``: check what needs no engine (the stack name, the program over the stack file), then run the
program with the stack's state (images made real on the engine), plan against the state
(plan.py), print the plan, apply it (apply.py), record the state and write
``var/stack-<stack>.env`` for operators, tests and playbooks. ``preview`` prints the plan only.
``down`` is `pulumi destroy`. Users deploy with `pulumi up`; docs/pulumi.md says what this emulator
models and what only a real `pulumi up` shows.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from . import state as state_mod
from .apply import ApplyFailed, apply
from .docker_provider import DockerProvider, ProviderError
from .outputs import NOT_AVAILABLE, NOT_RUN
from .engine import EngineMissing, engine_client
from .images import ImageError, Images
from .plan import Plan, PlanError, destroy_plan, make_plan
from .ports import free_port
from .program import (CONTAINER, IMAGE, REMOTE_IMAGE, SERVICE, VOLUME, Graph, ImagesFailed, ProgramFailed,
                      program_error, run_program, stacks)
from .state import StackState, StateLocked, stack_dir
from .values import id_marker, resolve_ids, reveal

ROOT = Path(__file__).resolve().parents[1]
VAR = ROOT / "var"
# Resources whose values a kept volume needs again: the generated secrets the data was created with.
SECRET_TYPES = {"random:index/randomPassword:RandomPassword", "tls:index/privateKey:PrivateKey",
                "tls:index/selfSignedCert:SelfSignedCert"}


class StackError(Exception):
    """One line: what stopped the run and what to do."""


@dataclass
class RunningStack:
    stack: str
    prefix: str
    graph: Graph
    state: StackState
    env_file: Path
    env: dict[str, str]
    plan: Plan | None = None
    timings: dict | None = None
    var_dir: Path = VAR
    apply_seconds: float = 0.0  # the plan's steps, from the first to every container healthy
    swarm: object = None  # swarm_nodes.Swarm of a swarm stack run on local nodes

    def resource(self, logical: str):
        return next(r for r in self.state.live() if r.name == logical and r.type == CONTAINER)

    def container(self, logical: str) -> str:
        """Docker name of the container the program calls ``logical`` (e.g. "gateway-container")."""
        return reveal(self.resource(logical).inputs)["name"]

    def host_port(self, logical: str, port: str) -> int:
        c = engine_client().containers.get(self.container(logical))
        return int(c.attrs["NetworkSettings"]["Ports"][port][0]["HostPort"])

    def published_port(self, logical: str, internal: int) -> int:
        """The port on this machine's loopback where ``logical`` answers on its ``internal`` port."""
        if self.swarm is None:
            return self.host_port(logical, f"{internal}/tcp")
        svc = reveal(next(r for r in self.state.live() if r.name == logical and r.type == SERVICE).inputs)
        [published] = [p["publishedPort"] for p in svc["endpointSpec"]["ports"] if p["targetPort"] == internal]
        return self.swarm.address(1, int(published))[1]

    def certificate(self) -> str:
        """The certificate the gateway serves."""
        from .values import reveal as _reveal
        r = next(r for r in self.state.live() if r.name == "gateway-container")
        if r.type == CONTAINER:
            return next(u["content"] for u in _reveal(r.inputs)["uploads"] if u["file"].endswith("server.crt"))
        import base64
        refs = _reveal(r.inputs)["taskSpec"]["containerSpec"]["configs"]
        name = next(c["configName"] for c in refs if c["fileName"].endswith("server.crt"))
        config = next(x for x in self.state.live() if x.type.endswith(":ServiceConfig") and
                      _reveal(x.inputs)["name"] == name)
        return base64.b64decode(_reveal(config.inputs)["data"]).decode()

    def replicas(self) -> list[str]:
        return [self.container(r.name) for r in self.graph.replicas()]

    def containers(self) -> dict[str, str]:
        """Logical name -> Docker name of every container the stack runs."""
        return {r.name: reveal(r.inputs)["name"] for r in self.state.live()
                if r.type == CONTAINER and NOT_RUN not in r.outputs}

    def not_run(self) -> dict[str, str]:
        """Logical name -> why, for the containers whose image cannot be had here (Grafana)."""
        return {r.name: r.outputs[NOT_RUN] for r in self.state.live()
                if r.type in (CONTAINER, SERVICE) and NOT_RUN in r.outputs}

    def images(self) -> dict[str, str]:
        """Image reference -> image id, for every image the stack runs."""
        out = {}
        for r in self.state.live():
            if r.type == "docker:index/remoteImage:RemoteImage" and not str(r.outputs.get("imageId", "")).startswith(
                    NOT_AVAILABLE):
                out[reveal(r.inputs)["name"]] = r.outputs["imageId"]
            elif r.type == "docker:index/image:Image":
                out[reveal(r.inputs)["imageName"]] = r.outputs["repoDigest"]
        return out

    def published(self) -> dict[tuple[str, str], tuple[str, int]]:
        """(container, "443/tcp") -> (host ip, host port) of every published port."""
        client = engine_client()
        out = {}
        for name in self.containers().values():
            for port, bindings in (client.containers.get(name).attrs["NetworkSettings"]["Ports"] or {}).items():
                for b in bindings or []:
                    out[(name, port)] = (b["HostIp"], int(b["HostPort"]))
        return out


def check_stack(stack: str) -> None:
    if stack not in stacks():
        raise StackError(f"unknown stack {stack!r}: the stacks are {', '.join(stacks())} (Pulumi.<stack>.yaml)")


def check(stack: str, var_dir: Path = VAR, config: dict | None = None) -> None:
    """Everything that needs no engine: the stack name, and the program over the stack file."""
    check_stack(stack)
    st = state_mod.load(stack, var_dir)
    _program(stack, "preview", st, _config(_settings(st, None, None, config)), realise="check")


def _program(stack: str, mode: str, st: StackState, config: dict, realise: bool | str) -> Graph:
    """realise: images built/taken on the engine (True), left unknown (False), or "check": unknown and
    their build contexts not prepared either (no wheel download; only whether the program accepts the
    stack file matters, before any engine is asked)."""
    try:
        return run_program(stack, mode=mode, config=config, prior=st.prior(), realise_images=realise)
    except ImagesFailed as exc:
        raise StackError(f"stack {stack} not started: {exc}") from None
    except ProgramFailed as exc:
        raise StackError(f"the Pulumi program rejects Pulumi.{stack}.yaml: {program_error(exc)}") from None


def _settings(st: StackState, prefix: str | None, ports: str | None, config: dict | None) -> dict:
    """The emulator's own settings for this stack, kept in its state between runs."""
    s = st.settings
    if prefix is not None:
        s["prefix"] = prefix
    if ports is not None:
        s["ports"] = ports
    if config is not None:
        s["config"] = config
    s.setdefault("ports", "exact")
    s.setdefault("config", {})
    s.setdefault("port_map", {})
    return s


def _config(s: dict) -> dict:
    return {**({"namePrefix": s["prefix"]} if s.get("prefix") else {}), **s.get("config", {})}


def preview(stack: str, *, var_dir: Path = VAR, config: dict | None = None) -> Plan:
    """`pulumi preview`: the plan against the stack's state; needs no engine, builds nothing."""
    check_stack(stack)
    st = state_mod.load(stack, var_dir)
    s = _settings(st, None, None, config)
    graph = _program(stack, "preview", st, _config(s), realise=False)
    try:
        return make_plan(st, graph)
    except PlanError as exc:
        raise StackError(str(exc)) from None


def up(stack: str, *, prefix: str | None = None, ports: str | None = None, var_dir: Path = VAR,
       config: dict | None = None, replace: tuple[str, ...] = (), publish_models: bool = True,
       quiet: bool = False, swarm_heartbeat: float | None = None) -> RunningStack:
    """`pulumi up` of ``stack`` (``config`` overrides stack-file keys as `pulumi config set` would;
    ``prefix`` and ``ports`` are the emulator's: a name prefix, and "free" to publish every host port
    on a free loopback port; ``replace``: logical names to replace, as `pulumi up --replace`;
    ``swarm_heartbeat``: seconds between the local swarm's node heartbeats, Docker's 5 by default).
    Raises StackError with one line."""
    check_stack(stack)
    say = (lambda m: None) if quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    try:
        with state_mod.locked(stack, var_dir):
            st = state_mod.load(stack, var_dir)
            s = _settings(st, prefix, ports, config)
            if swarm_heartbeat is not None:
                s["heartbeat"] = swarm_heartbeat
            # Everything that needs no engine first: the stack file through the program.
            checked = _program(stack, "preview", st, _config(s), realise="check")
            try:
                client = engine_client()
            except EngineMissing as exc:
                raise StackError(str(exc)) from None
            images = Images(client)
            missing = images.unbuildable()
            if missing:
                raise StackError("; ".join(missing))
            swarm = _swarm_up(stack, checked, s, st) if _is_swarm(checked) else None
            graph = _program(stack, "up", st, _config(s), realise=True)
            if swarm is not None:
                _load_images(swarm, graph)
            try:
                plan = make_plan(st, graph, set(replace))
            except PlanError as exc:
                raise StackError(str(exc)) from None
            # The provider talks to the stack's engine: this one, or the Swarm's manager.
            target = swarm.client() if swarm is not None else client
            provider = DockerProvider(target, images, "exact" if swarm else s["ports"], s["port_map"])
            _preflight(plan, provider)
            say(plan.render())
            started = time.monotonic()
            try:
                timings = apply(plan, st, provider)
            except ApplyFailed as exc:
                st.save()
                raise StackError(f"stack {stack}: pulumi up failed: {exc} — nothing was rolled back (volumes and "
                                 f"data stay); fix the cause and run make stack-up STACK={stack} again, or "
                                 f"make stack-down STACK={stack}") from None
            st.exports = resolve_ids(graph.exports, lambda urn: st.get(urn).id if st.get(urn) else id_marker(urn))
            st.save()
            run = RunningStack(stack, _prefix(graph), graph, st, var_dir / f"stack-{stack}.env", {}, plan, timings,
                               var_dir, apply_seconds=time.monotonic() - started, swarm=swarm)
            run.env = write_env(run)
            if publish_models:
                _publish_models(run, target)
            return run
    except StateLocked as exc:
        raise StackError(str(exc)) from None
    except (ImageError, ProviderError) as exc:
        raise StackError(f"stack {stack} not started: {exc}") from None


def _preflight(plan: Plan, provider: DockerProvider) -> None:
    """Before anything changes: every input translatable, every host port it will publish free."""
    for step in plan.steps:
        if step.op in ("create", "replace", "update") and step.new is not None:
            provider.check(step.new)
    for step in plan.steps:
        if step.op not in ("create", "replace") or step.new is None:
            continue
        held = set()
        if step.old is not None:  # the old container of a replacement holds its own ports
            held = {f"{p.get('ip', '0.0.0.0')}:{p.get('external')}" for p in reveal(step.old.inputs).get("ports", [])}
        for address in provider.taken_ports(step.new):
            if address not in held:
                raise StackError(f"host port {address} ({step.name}) is already taken: stop what listens there, or "
                                 f"move it in Pulumi.{plan.stack}.yaml (STACK_PORTS=free publishes every port on a "
                                 f"free loopback port instead)")


def _prefix(graph: Graph) -> str:
    return graph.export("replica_names")[0].rsplit("-service-", 1)[0]


# -- a stack whose workloads are Swarm services ---------------------------------------------------------
SWARM_NODES = 3  # one manager, two workers
DATABASE_NODE = 2  # a worker keeps the database (its node label); the manager keeps the gateway


def _is_swarm(graph: Graph) -> bool:
    return bool(graph.of_type(SERVICE))


def _published(graph: Graph) -> list[int]:
    """The host-mode ports the stack's services publish on their nodes."""
    return sorted({int(p["publishedPort"]) for svc in graph.of_type(SERVICE)
                   for p in (svc.get("endpointSpec") or {}).get("ports", [])})


def _load_images(swarm, graph: Graph) -> None:
    """Each image built or taken on this machine's engine, loaded into the nodes where its workload
    may run (its placement constraints; the manager for containers) — what a real cluster's nodes
    do by pulling from a registry."""
    refs = {}
    for r in graph.of_type(REMOTE_IMAGE):
        if not str(r.outputs.get("imageId", "")).startswith(NOT_AVAILABLE):  # Grafana: not run here
            refs[r.outputs.get("imageId")] = reveal(r.inputs)["name"]
    for r in graph.of_type(IMAGE):
        refs[r.outputs.get("repoDigest")] = reveal(r.inputs)["imageName"]
    wanted: dict[str, set[int]] = {}
    every = {n.index for n in swarm.nodes}
    for r in graph.of_type(SERVICE) + graph.of_type(CONTAINER):
        inputs = reveal(r.inputs)
        image = inputs["taskSpec"]["containerSpec"]["image"] if r.type == SERVICE else inputs["image"]
        if image not in refs:
            continue  # an image that cannot be had here (Grafana): not run
        nodes = {1} if r.type == CONTAINER else _placement_nodes(swarm, inputs, every)
        wanted.setdefault(refs[image], set()).update(nodes)
    by_nodes: dict[tuple, list[str]] = {}
    for ref, nodes in sorted(wanted.items()):
        by_nodes.setdefault(tuple(sorted(nodes)), []).append(ref)
    # Images that go to the same nodes travel in one stream; the streams to the most nodes first, so the
    # layers they share with the others are on those nodes already and left out of the later streams
    # (swarm_nodes._LoadedLayers: the ops image is the service image and one layer more).
    for nodes, group in sorted(by_nodes.items(), key=lambda item: (-len(item[0]), item[0])):
        swarm.load_images(group, nodes=list(nodes))


def _placement_nodes(swarm, inputs: dict, every: set[int]) -> set[int]:
    """The nodes a service's tasks may be scheduled on, from its placement constraints."""
    constraints = ((inputs["taskSpec"].get("placement") or {}).get("constraints")) or []
    states = swarm.states()
    nodes = set(every)
    for c in constraints:
        key, _, value = (part.strip() for part in c.partition("=="))
        if key == "node.role":
            nodes &= {i for i, st in states.items() if st["role"] == value}
        elif key.startswith("node.labels."):
            label = key.removeprefix("node.labels.")
            nodes &= {i for i, st in states.items() if st["labels"].get(label) == value}
    return nodes or every


def _swarm_up(stack: str, graph: Graph, s: dict, st: StackState):
    """The local Swarm a swarm stack runs on when no real one is given: three nodes as containers
    (swarm_nodes.py), the database's node labelled, the models folder where the stack file says every
    node has it, and every port the services publish reachable on this machine's loopback (the
    stack file's port, or a free one with STACK_PORTS=free, kept across runs)."""
    from . import swarm_nodes

    prefix = _prefix(graph)
    ports = _published(graph)
    fixed = {}
    for port in ports:
        key = f"swarm:{port}"
        if key not in s["port_map"]:
            s["port_map"][key] = free_port() if s["ports"] == "free" else port
        fixed[port] = s["port_map"][key]
    service = graph.one(SERVICE, "service")
    models = [m["source"] for m in service.get("taskSpec")["containerSpec"].get("mounts", []) if m["type"] == "bind"]
    label = next(c.split(" == ")[0].removeprefix("node.labels.") for c in
                 graph.one(SERVICE, "database-container").get("taskSpec")["placement"]["constraints"])
    s["swarm"] = prefix
    st.save()  # the ports chosen for the nodes: a later run (after a failure, too) asks for the same
    try:
        return swarm_nodes.up(prefix, nodes=SWARM_NODES, managers=1, labels={DATABASE_NODE: {label: "true"}},
                              ports=ports, fixed_ports={1: fixed}, binds={str(ROOT / "service/models"): m for m in models},
                              heartbeat=float(s.get("heartbeat", 5)))
    except swarm_nodes.SwarmError as exc:
        raise StackError(str(exc)) from None


def down(stack: str, *, keep_volumes: bool = False, exclude_protected: bool = False, unprotect: bool = False,
         var_dir: Path = VAR, quiet: bool = False) -> list[str]:
    """`pulumi destroy`. ``keep_volumes``: keep every volume and the generated secrets their data
    was made with (so a later up reopens them), as `pulumi destroy --exclude-protected` would if
    those were protected; ``exclude_protected``: keep what is protected; ``unprotect``: destroy it
    too. Returns the Docker names removed."""
    check_stack(stack)
    path = stack_dir(stack, var_dir) / "state.json"
    if not path.is_file():
        return []
    try:
        with state_mod.locked(stack, var_dir):
            st = state_mod.load(stack, var_dir)
            keep = set()
            if keep_volumes:
                keep |= {r.urn for r in st.live() if r.type == VOLUME or r.type in SECRET_TYPES}
            if exclude_protected:
                keep |= {r.urn for r in st.live() if r.options.get("protect")}
            if unprotect:
                for r in st.resources:
                    r.options["protect"] = False
            try:
                plan = destroy_plan(st, exclude=keep)
            except PlanError as exc:
                raise StackError(f"stack-down {stack}: {exc}") from None
            if not quiet:
                print(plan.render(), file=sys.stderr, flush=True)
            client = engine_client()
            swarm = _attached_swarm(st)
            target = swarm.client() if swarm is not None else client
            try:
                apply(plan, st, DockerProvider(target, Images(client), st.settings.get("ports", "exact"),
                                               st.settings.get("port_map", {})))
            except ApplyFailed as exc:
                raise StackError(f"stack-down {stack} failed: {exc}") from None
            if swarm is not None and not st.resources:
                from . import swarm_nodes
                removed_nodes = swarm_nodes.down(swarm.prefix)
                if not quiet:
                    print(f"removed the local swarm {swarm.prefix}: {len(removed_nodes)} objects", file=sys.stderr)
            removed = [reveal(s.old.inputs).get("name", s.name) for s in plan.deletes
                       if s.type in (CONTAINER, VOLUME, "docker:index/network:Network")]
            if not st.resources:
                path.unlink()
            else:
                st.save()
            (var_dir / f"stack-{stack}.env").unlink(missing_ok=True)
            return removed
    except StateLocked as exc:
        raise StackError(str(exc)) from None
    except EngineMissing as exc:
        raise StackError(str(exc)) from None


def _attached_swarm(st: StackState):
    """The local swarm an earlier `up` ran the stack on, if it is still there."""
    prefix = st.settings.get("swarm")
    if not prefix:
        return None
    from . import swarm_nodes
    try:
        return swarm_nodes.attach(prefix)
    except swarm_nodes.SwarmError:
        return None


def status(stack: str, var_dir: Path = VAR) -> list[tuple[str, str, str]]:
    """(container, state, health) of each container the stack's state records."""
    check_stack(stack)
    st = state_mod.load(stack, var_dir)
    if not st.live():
        return []
    try:
        client = engine_client()
    except EngineMissing as exc:
        raise StackError(str(exc)) from None
    out = []
    swarm = _attached_swarm(st)
    if swarm is not None:
        client = swarm.client()
    for r in st.live():
        if r.type == SERVICE and NOT_RUN in r.outputs:
            out.append((reveal(r.inputs)["name"], "not run", r.outputs[NOT_RUN]))
            continue
        if r.type == SERVICE:
            name = reveal(r.inputs)["name"]
            try:
                tasks = client.services.get(name).tasks(filters={"desired-state": "running"})
            except docker.errors.NotFound:
                out.append((name, "missing", "-"))
                continue
            running = sum(1 for t in tasks if t["Status"]["State"] == "running")
            out.append((name, f"{running}/{len(tasks)} tasks running", "service"))
            continue
        if r.type != CONTAINER:
            continue
        name = reveal(r.inputs)["name"]
        if NOT_RUN in r.outputs:
            out.append((name, "not run", r.outputs[NOT_RUN]))
            continue
        try:
            c = client.containers.get(name)
            out.append((name, c.status, (c.attrs["State"].get("Health") or {}).get("Status", "-")))
        except docker.errors.NotFound:
            out.append((name, "missing", "-"))
    return out


def _publish_models(run: RunningStack, client: docker.DockerClient) -> None:
    """Staging and prod mount an empty models volume at first: publish `make model`'s models into it
    with the ops playbook operators use (playbooks/models.yml), once, while it is empty."""
    try:
        ops = client.containers.get(run.container("ops-container"))
    except (StopIteration, docker.errors.NotFound):
        return
    if not any(m["Destination"] == "/models" for m in ops.attrs["Mounts"]):
        return
    if ops.exec_run(["sh", "-c", "ls -A /models"]).output.strip():
        return
    proc = playbook(run.stack, "models.yml", "-e", f"models_src={ROOT / 'service/models'}", prefix=run.prefix,
                    env=run.env)
    if proc.returncode != 0:
        failed = [line for line in proc.stdout.splitlines() if "FAILED" in line or '"msg"' in line]
        raise StackError(f"publishing models into stack {run.stack} failed: "
                         f"{(failed or [proc.stdout[-500:]])[-1].strip()}")


def playbook(stack: str, name: str, *args: str, prefix: str, env: dict | None = None,
             timeout: float = 900) -> subprocess.CompletedProcess:
    """ansible-playbook -i inventories/<stack> playbooks/<name> for the stack whose containers are
    named <prefix>-*, as an operator runs it (the venv's Ansible, the repository's ansible.cfg)."""
    bin_dir = Path(sys.executable).parent
    full_env = {**os.environ, "STACK_PREFIX": prefix, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
                "ANSIBLE_NOCOLOR": "1", **(env or {})}
    return subprocess.run([str(bin_dir / "ansible-playbook"), "-i", str(ROOT / "inventories" / stack),
                           str(ROOT / "playbooks" / name), *args],
                          capture_output=True, text=True, env=full_env, cwd=ROOT, timeout=timeout)


def write_env(run: RunningStack) -> dict[str, str]:
    """var/stack-<stack>.env (0600): what people, tests and playbooks need to reach the stack."""
    folder = stack_dir(run.stack, run.var_dir)
    ca = folder / "ca.pem"
    ca.write_text(run.certificate())
    https = run.published_port("gateway-container", 443)
    url = run.graph.export("url")
    env = {
        "STACK": run.stack,
        "STACK_PREFIX": run.prefix,
        "GATEWAY_URL": f"https://localhost:{https}",
        "GATEWAY_HTTP_URL": f"http://localhost:{run.published_port('gateway-container', 80)}",
        # The name the stack serves (its certificate also names localhost, which GATEWAY_URL uses).
        "GATEWAY_SERVER_NAME": urllib.parse.urlsplit(url).hostname,
        "CA_CERT": str(ca),
        "PROMETHEUS_URL": f"http://127.0.0.1:{run.published_port('monitoring-prometheus', 9090)}",
        "PREDICTION_API_KEY": run.graph.export("api_key"),
        "PREDICTION_DB_PASSWORD": run.graph.export("db_password"),
        # What the ops playbooks read (inventories/<stack>): the gateway the health check goes
        # through, and the CA it trusts.
        "PREDICTION_GATEWAY_URL": f"https://localhost:{https}",
        "PREDICTION_GATEWAY_CA": str(ca),
    }
    if run.swarm is not None:
        # The Swarm's manager: `docker service ls`, and the engine the ops playbooks work through.
        env["DOCKER_HOST"] = run.swarm.docker_host
    fd = os.open(run.env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"# Written by `make stack-up STACK={run.stack}`: `set -a; . {run.env_file}; set +a`\n")
        f.writelines(f"{k}={shlex.quote(str(v))}\n" for k, v in env.items())
    return env


def load_running(stack: str, var_dir: Path = VAR) -> RunningStack:
    """A stack an earlier `up` left running, from its state (no program run)."""
    st = state_mod.load(stack, var_dir)
    if not st.resources:
        raise StackError(f"stack {stack} is not up")
    graph = Graph({"stack": stack, "resources": [
        {"urn": r.urn, "type": r.type, "name": r.name, "custom": r.custom, "parent": r.parent, "inputs": r.inputs,
         "outputs": r.outputs, "options": r.options} for r in st.live()], "exports": st.exports, "logs": []})
    return RunningStack(stack, _prefix(graph), graph, st, var_dir / f"stack-{stack}.env", {}, var_dir=var_dir)
