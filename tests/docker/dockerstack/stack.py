"""One Pulumi stack on a Docker engine without the Pulumi CLI: run the real program over the real
stack file under mocks, create what it registers (engine.py), wait until healthy, and write what
operators and tests need to reach it (var/stack-<stack>.env, var/stack-<stack>.json).

Users deploy with `pulumi up`; this path exists for the tests and for trying a stack on one machine.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
from pulumi_graph import STACKS, Graph, ProgramFailed, run_stack

from .engine import Deployment, Engine, EngineError
from .images import ImageError, Images

ROOT = Path(__file__).resolve().parents[3]
VAR = ROOT / "var"


class StackError(Exception):
    """One line: what stopped the stack and what to do."""


@dataclass
class RunningStack:
    stack: str
    prefix: str
    graph: Graph
    deployment: Deployment
    env_file: Path
    env: dict[str, str]

    def container(self, logical: str) -> str:
        """Docker name of the container the program calls ``logical`` (e.g. "gateway-container")."""
        return self.deployment.containers[logical]

    def host_port(self, logical: str, port: str) -> int:
        return self.deployment.ports[(self.container(logical), port)][1]

    def replicas(self) -> list[str]:
        return [self.deployment.containers[r.name] for r in self.graph.replicas()]

    def recreate(self, logical: str, on_removed=None) -> str:
        """Replace one container as `pulumi up` would (same inputs, new container, volumes kept)."""
        client = engine_client()
        return Engine(client, Images(client)).recreate(graph_resources(self.graph), logical, self.deployment,
                                                       on_removed)


def engine_client() -> docker.DockerClient:
    """A client for DOCKER_HOST (or the local socket) that answers, or StackError saying how to start one."""
    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        client = docker.from_env(timeout=300)
        client.ping()
        return client
    except Exception as exc:  # noqa: BLE001 — any failure to reach the engine reads the same to a user
        raise StackError(f"no Docker engine answers at {where} ({type(exc).__name__}); start one "
                         f"(as root: scripts/docker-engine.sh start) or set DOCKER_HOST") from None


def program_graph(stack: str, prefix: str | None, workdir: Path, config: dict | None = None) -> Graph:
    """The resources the program registers for ``stack`` (``config`` overrides stack-file keys)."""
    if stack not in STACKS or not (ROOT / f"Pulumi.{stack}.yaml").is_file():
        raise StackError(f"unknown stack {stack!r}: the stacks are {', '.join(STACKS)} (Pulumi.<stack>.yaml)")
    overrides = {"config": {**({"namePrefix": prefix} if prefix else {}), **(config or {})}}
    try:
        return run_stack(stack, workdir, overrides)
    except ProgramFailed as exc:
        lines = [line for line in str(exc).splitlines() if line.strip()]
        reason = next((line for line in reversed(lines) if "Error" in line), lines[-1] if lines else "")
        raise StackError(f"the Pulumi program rejects Pulumi.{stack}.yaml: {reason.strip()}") from None


def state_path(stack: str, var_dir: Path = VAR) -> Path:
    return var_dir / f"stack-{stack}.json"


def up(stack: str, *, prefix: str | None = None, ports: str = "exact", var_dir: Path = VAR,
       config: dict | None = None) -> RunningStack:
    """Create ``stack`` (replacing an earlier run of it, volumes kept) and wait until it is healthy.
    ``config`` overrides stack-file keys as `pulumi config set` would (the tests use it)."""
    client = engine_client()
    if state_path(stack, var_dir).is_file():
        down(stack, keep_volumes=True, var_dir=var_dir)
    with tempfile.TemporaryDirectory(prefix=f"stack-{stack}-") as work:
        graph = program_graph(stack, prefix, Path(work), config)
    images = Images(client)
    engine = Engine(client, images, ports=ports)
    deployment = Deployment()
    try:
        engine.up(graph_resources(graph), deployment)
    except (EngineError, ImageError, docker.errors.APIError) as exc:
        engine.down(deployment, keep_volumes=False)
        message = exc.explanation if isinstance(exc, docker.errors.APIError) else str(exc)
        raise StackError(f"stack {stack} not started: {message}") from None
    try:
        publish_models(stack, deployment, client)
    except StackError:
        engine.down(deployment, keep_volumes=False)
        raise
    real_prefix = graph.exports["replica_names"]["value"][0].rsplit("-service-", 1)[0]
    run = RunningStack(stack, real_prefix, graph, deployment, var_dir / f"stack-{stack}.env", {})
    run.env = write_state(run, var_dir)
    return run


def kept_secrets(graph: Graph) -> dict[str, str]:
    """The secrets a deployed stack holds, as the config keys they came from: Pulumi keeps
    generated ones in its state, so a later `pulumi up` reuses them instead of generating anew."""
    exports = {k: v["value"] for k, v in graph.exports.items()}
    gateway = graph.container("gateway-container")
    replica = graph.replicas()[0].env()
    return {"dbPassword": exports["db_password"], "apiKey": exports["api_key"],
            "grafanaAdminPassword": exports["grafana_admin_password"], "jwtSecret": replica["PREDICTION_JWT_SECRET"],
            "appDbPassword": graph.container("service-migrate").env()["PREDICTION_APP_DB_PASSWORD"],
            "tlsCert": gateway.upload("/etc/nginx/tls/server.crt"), "tlsKey": gateway.upload("/etc/nginx/tls/server.key")}


def update(run: RunningStack, config: dict, var_dir: Path = VAR) -> list[str]:
    """`pulumi config set` of ``config`` and `pulumi up` on a running stack: the program runs again
    with the stack's secrets kept, and what changed is replaced as Pulumi orders it (engine.replace).
    Returns the logical names of the replaced containers."""
    with tempfile.TemporaryDirectory(prefix=f"stack-{run.stack}-") as work:
        overrides = {"config": {"namePrefix": run.prefix, **config}, "secrets": kept_secrets(run.graph)}
        try:
            graph = run_stack(run.stack, Path(work), overrides)
        except ProgramFailed as exc:
            raise StackError(f"the Pulumi program rejects the change {config}: {str(exc).strip().splitlines()[-1]}") \
                from None
    client = engine_client()
    replaced = Engine(client, Images(client)).replace(graph_resources(run.graph), graph_resources(graph),
                                                      run.deployment)
    run.graph = graph
    write_state(run, var_dir)
    return replaced


def publish_models(stack: str, deployment: Deployment, client: docker.DockerClient) -> None:
    """Staging and prod mount an empty models volume: publish `make model`'s models into it with the
    ops playbook operators use (playbooks/models.yml), which rolls the replicas one by one."""
    replicas = [name for logical, name in deployment.containers.items() if logical.startswith("service-")]
    mounts = client.containers.get(replicas[0]).attrs["Mounts"] if replicas else []
    if not any(m["Type"] == "volume" and m["Name"].endswith("-models") for m in mounts):
        return
    prefix = replicas[0].rsplit("-service-", 1)[0]
    proc = playbook(stack, "models.yml", "-e", f"models_src={ROOT / 'service/models'}", prefix=prefix)
    if proc.returncode != 0:
        failed = [line for line in proc.stdout.splitlines() if "FAILED" in line or '"msg"' in line]
        raise StackError(f"publishing models into stack {stack} failed: {(failed or [proc.stdout[-500:]])[-1].strip()}")


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


def graph_resources(graph: Graph) -> list[dict]:
    return [{"type": r.type, "name": r.name, "custom": r.custom, "inputs": r.inputs, "outputs": r.outputs,
             "options": r.options} for r in graph.resources]


def down(stack: str, *, keep_volumes: bool = False, var_dir: Path = VAR) -> list[str]:
    """Remove what ``up`` created for ``stack`` (volumes too unless ``keep_volumes``); returns names."""
    path = state_path(stack, var_dir)
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    deployment = Deployment.from_json(data["deployment"])
    client = engine_client()
    Engine(client, Images(client)).down(deployment, keep_volumes=keep_volumes)
    path.unlink()
    (var_dir / f"stack-{stack}.env").unlink(missing_ok=True)
    return list(deployment.containers.values()) + deployment.networks + ([] if keep_volumes else deployment.volumes)


def write_state(run: RunningStack, var_dir: Path) -> dict[str, str]:
    """var/stack-<stack>.json (for `down`) and var/stack-<stack>.env (for people, tests, playbooks)."""
    var_dir.mkdir(parents=True, exist_ok=True)
    secrets_dir = var_dir / f"stack-{run.stack}"
    secrets_dir.mkdir(mode=0o700, exist_ok=True)
    exports = {k: v["value"] for k, v in run.graph.exports.items()}
    # The certificate the gateway serves (self-signed by the stack, or given as tlsCert).
    ca = secrets_dir / "ca.pem"
    ca.write_text(run.graph.container("gateway-container").upload("/etc/nginx/tls/server.crt"))
    https = run.host_port("gateway-container", "443/tcp")
    env = {
        "STACK": run.stack,
        "STACK_PREFIX": run.prefix,
        "GATEWAY_URL": f"https://localhost:{https}",
        "GATEWAY_HTTP_URL": f"http://localhost:{run.host_port('gateway-container', '80/tcp')}",
        # The name the stack serves (its certificate also names localhost, which GATEWAY_URL uses).
        "GATEWAY_SERVER_NAME": urllib.parse.urlsplit(exports["url"]).hostname,
        "CA_CERT": str(ca),
        "PROMETHEUS_URL": f"http://127.0.0.1:{run.host_port('monitoring-prometheus', '9090/tcp')}",
        "PREDICTION_API_KEY": exports["api_key"],
        "PREDICTION_DB_PASSWORD": exports["db_password"],
        # What the ops playbooks read (inventories/<stack>): the gateway the health check goes
        # through, and the CA it trusts.
        "PREDICTION_GATEWAY_URL": f"https://localhost:{https}",
        "PREDICTION_GATEWAY_CA": str(ca),
    }
    env_file = var_dir / f"stack-{run.stack}.env"
    fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"# Written by `make stack-up STACK={run.stack}`: `set -a; . {env_file}; set +a`\n")
        f.writelines(f"{k}={shlex.quote(v)}\n" for k, v in env.items())
    state = {"stack": run.stack, "prefix": run.prefix, "deployment": run.deployment.to_json()}
    state_path(run.stack, var_dir).write_text(json.dumps(state, indent=1))
    return env
