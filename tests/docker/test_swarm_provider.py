"""The stack emulator's Swarm resources on a real one-node Swarm (a throwaway dockerd in a container,
stack_emulator/swarm_nodes.py with one node — never the host's engine): docker.Service, docker.Secret,
docker.ServiceConfig and an overlay network, planned and applied as `make stack-up` does
(plan.py, apply.py, docker_provider.py -> swarm_provider.py), checked as a user would: the service
answers, its secret is a 0400 file and not in its environment, a changed config rolls the service,
a failing update is rolled back by Swarm and reported, a service that never runs is deleted, and
nothing is left after the destroy. Each test prints what it measured.

This kernel has no IPVS: services use endpoint mode dnsrr and ports published in host mode.
"""
from __future__ import annotations

import base64
import hashlib
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass

import docker.errors
import pytest
import requests

from docker_support import exec_lines

from stack_emulator.apply import ApplyFailed, apply
from stack_emulator.docker_provider import DockerProvider
from stack_emulator.engine import EngineMissing, engine_client
from stack_emulator.images import ImageError, Images
from stack_emulator.plan import destroy_plan, make_plan
from stack_emulator.program import NETWORK, SECRET, SERVICE, SERVICE_CONFIG, Graph
from stack_emulator import swarm_nodes
from stack_emulator.state import StackState
from stack_emulator.values import id_marker, resolve_ids

IMAGE = "python:3.11-slim"
PORTS = (18080, 18081)
PREFIX = "urn:pulumi:swarm::p::"


def urn(typ: str, name: str) -> str:
    return f"{PREFIX}{typ}::{name}"


def registration(typ: str, name: str, inputs: dict, deps: dict | None = None) -> dict:
    """One registration as the program's mock run records it (ids of new resources are markers)."""
    return {"urn": urn(typ, name), "type": typ, "name": name, "custom": True, "parent": "", "inputs": inputs,
            "outputs": dict(inputs), "options": {"dependsOn": [], "deleteBeforeReplace": None,
                                                 "propertyDependencies": {k: [urn(*d) for d in v]
                                                                          for k, v in (deps or {}).items()}}}


@dataclass
class OneNodeSwarm:
    """The fixture's Swarm: ``client`` is its manager's engine."""
    nodes: swarm_nodes.Swarm
    client: docker.DockerClient

    def url(self, port: int) -> str:
        """Where the host reaches ``port`` published (host mode) on the node."""
        return self.nodes.url(1, port)


@pytest.fixture(scope="module")
def swarm():
    """A one-node Swarm (stack_emulator/swarm_nodes.py, as `make stack-up STACK=swarm` makes three)
    with the test image loaded; removed with everything on it afterwards. Needs an engine and the
    test image only (not the stacks' images); without them one skip line, a failure under CI."""
    started = time.monotonic()
    try:
        host = engine_client()
        Images(host).ensure(IMAGE)
    except (EngineMissing, ImageError) as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the Swarm provider tests are mandatory under CI: {exc}")
        pytest.skip(f"Swarm provider tests skipped: {exc}")
    prefix, run_dir = f"t{secrets.token_hex(2)}-one", tempfile.mkdtemp(prefix="swarm-one-")
    try:
        nodes = swarm_nodes.up(prefix, nodes=1, images=[IMAGE], ports=PORTS, run_dir=run_dir)
        client = nodes.client(timeout=180)
        print(f"\n[swarm] one-node Swarm up, {IMAGE} loaded, in {time.monotonic() - started:.1f}s")
        yield OneNodeSwarm(nodes, client)
        client.close()
    finally:
        swarm_nodes.down(prefix, run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)


class Stack:
    """A state and a provider on the node: ``up(graph)`` plans and applies like `make stack-up`."""

    def __init__(self, node: OneNodeSwarm, tmp_path):
        self.node = node
        self.state = StackState("swarm", tmp_path / "state.json")
        self.provider = DockerProvider(node.client, images=None)

    def graph(self, resources) -> Graph:
        """The registrations as the program's mock run records them: a resource whose inputs are those
        of the state answers its real id (stack_emulator/_runner.py), the others an id marker."""
        answered: dict[str, str] = {}  # URN -> the id the mock engine answered (real when unchanged)
        resolved = []
        for x in resources:  # registration order: what a resource uses registered before it
            inputs = resolve_ids(x["inputs"], lambda u: answered.get(u, id_marker(u)))
            prior = self.state.get(x["urn"])
            if prior is not None and not prior.init_errors and prior.inputs == inputs:
                answered[x["urn"]] = prior.id
            resolved.append({**x, "inputs": inputs, "outputs": dict(inputs)})
        return Graph({"stack": "swarm", "resources": resolved, "exports": {}, "logs": []})

    def up(self, *resources: dict):
        plan = make_plan(self.state, self.graph(resources))
        for step in plan.steps:
            if step.op in ("create", "replace", "update"):
                self.provider.check(step.new)  # the preflight of stack.up
        print(plan.render())
        started = time.monotonic()
        try:
            apply(plan, self.state, self.provider)
        finally:
            self.seconds = time.monotonic() - started
        return plan

    def destroy(self) -> float:
        started = time.monotonic()
        apply(destroy_plan(self.state), self.state, self.provider)
        return time.monotonic() - started

    def record(self, name: str):
        return next(r for r in self.state.live() if r.name == name)


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def web_app(port: int, *, config_name: str, secret_name: str, healthcheck: list[str] | None = None,
            published: bool = False, restart_policy: dict | None = None) -> dict:
    """A service serving /srv (its config mounted as /srv/index.html) on the overlay network, with an
    API key secret, updated with automatic rollback, waited on by converge_config. Published (in host
    mode) it is updated stop-first: a start-first task cannot start on the node whose port the old
    task holds, so such an update never converges on one node."""
    return {
        "name": f"web-{port}",
        "labels": [{"label": "com.docker.stack.namespace", "value": "swarm-test"}],
        "taskSpec": {
            "containerSpec": {
                "image": IMAGE,
                "commands": ["python", "-m", "http.server", str(port), "--directory", "/srv"],
                "env": {"API_KEY_FILE": "/run/secrets/api_key"},
                "healthcheck": {"tests": healthcheck or ["CMD", "python", "-c", "import urllib.request; "
                                                         f"urllib.request.urlopen('http://127.0.0.1:{port}/')"],
                                "interval": "1s", "timeout": "2s", "retries": 2},
                # the provider's delete waits up to the grace period for each task's container to be
                # removed, and fails if it is not: PID 1 must act on SIGTERM (init forwards it)
                "stopGracePeriod": "30s", "init": True,
                "secrets": [{"secretId": id_marker(urn(SECRET, "api-key")), "secretName": secret_name,
                             "fileName": "/run/secrets/api_key", "fileMode": 0o400}],
                "configs": [{"configId": id_marker(urn(SERVICE_CONFIG, "index")), "configName": config_name,
                             "fileName": "/srv/index.html"}],
            },
            "networksAdvanceds": [{"id": id_marker(urn(NETWORK, "backend")), "aliases": ["web"]}],
            **({"restartPolicy": restart_policy} if restart_policy else {}),
        },
        "mode": {"replicated": {"replicas": 1}},
        "endpointSpec": {"mode": "dnsrr", "ports": [{"targetPort": port, "publishedPort": port,
                                                     "publishMode": "host"}] if published else []},
        "updateConfig": {"order": "stop-first" if published else "start-first", "failureAction": "rollback",
                         "monitor": "6s"},
        "convergeConfig": {"delay": "1s", "timeout": "2m"},
    }


def resources(port: int, page: str, key: str, **web) -> list[dict]:
    # named by a content hash, as Swarm configs and secrets are immutable
    config_name, secret_name = f"index-{port}-{_hash(page)}", f"api-key-{port}-{_hash(key)}"
    deps = {"taskSpec": [(SECRET, "api-key"), (SERVICE_CONFIG, "index"), (NETWORK, "backend")]}
    return [registration(NETWORK, "backend", {"name": f"backend-{port}", "driver": "overlay", "attachable": True,
                                              "options": {"encrypted": ""}}),
            registration(SECRET, "api-key", {"name": secret_name, "data": {"__secret__": _b64(key)}}),
            registration(SERVICE_CONFIG, "index", {"name": config_name, "data": _b64(page)}),
            registration(SERVICE, "web", web_app(port, config_name=config_name, secret_name=secret_name, **web),
                         deps=deps)]


def get_inside(node: OneNodeSwarm, port: int, expect: str, timeout: float = 30) -> str:
    """GET http://web:<port>/ from a container on the service's attachable overlay network (the
    service's network alias, resolved by Swarm's DNS to its tasks: endpoint mode dnsrr), until it
    answers ``expect`` (a task just replaced may still be in DNS for a moment); the last answer."""
    fetch = f"import urllib.request; print(urllib.request.urlopen('http://web:{port}/', timeout=5).read().decode())"
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = node.client.containers.run(IMAGE, ["python", "-c", fetch], network=f"backend-{port}",
                                             remove=True).decode().strip()
        except docker.errors.ContainerError as exc:
            got = f"request failed: {exc.stderr.decode(errors='replace').strip().splitlines()[-1:]}"
        if got == expect or time.monotonic() > deadline:
            return got
        time.sleep(1)


def get(node: OneNodeSwarm, port: int) -> str:
    """GET / through the port the service publishes on the node (host mode), mapped to the host."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return requests.get(f"{node.url(port)}/", timeout=5).text
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def task_container(node: OneNodeSwarm, service: str):
    [container] = node.client.containers.list(filters={"label": f"com.docker.swarm.service.name={service}"})
    return container


def test_a_service_with_its_secret_config_and_overlay_network_is_created_updated_and_destroyed(swarm, tmp_path):
    stack = Stack(swarm, tmp_path)
    port = PORTS[0]
    plan = stack.up(*resources(port, "page one", "key-1"))
    assert [s.op for s in plan.steps] == ["create"] * 4
    created = stack.seconds
    assert get_inside(swarm, port, "page one") == "page one"

    # The state records the real ids the service was created with, not the run's markers.
    service = swarm.client.services.get(stack.record("web").id)
    ref = service.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]
    assert ref["Secrets"][0]["SecretID"] == stack.record("api-key").id
    assert ref["Configs"][0]["ConfigID"] == stack.record("index").id
    assert service.attrs["Spec"]["TaskTemplate"]["Networks"][0]["Target"] == stack.record("backend").id
    assert "{{id of" not in str(stack.record("web").inputs)
    # the provider's spec: the schema's update defaults where unset, durations as set, no restart
    # policy given: the engine's (restart after its default 5 s delay)
    assert service.attrs["Spec"]["UpdateConfig"]["Parallelism"] == 1
    assert ref["StopGracePeriod"] == 30 * 10**9
    assert "Delay" not in service.attrs["Spec"]["TaskTemplate"]["RestartPolicy"]
    network = swarm.client.networks.get(stack.record("backend").id)
    assert (network.attrs["Driver"], network.attrs["Attachable"], "encrypted" in network.attrs["Options"]) == \
        ("overlay", True, True)

    # The secret is a file only root can read, and in no task's environment.
    task = task_container(swarm, f"web-{port}")
    mode, content = exec_lines(task, ["sh", "-c", "stat -c %a /run/secrets/api_key; cat /run/secrets/api_key; echo"])
    assert (mode, content) == ("400", "key-1")
    assert not [e for e in task.attrs["Config"]["Env"] if "key-1" in e]

    # A new page: the config (named by its content) is replaced create-before-delete, the service
    # updated in place to use it, the old config deleted last.
    service_id = stack.record("web").id
    plan = stack.up(*resources(port, "page two", "key-1"))
    assert [(s.op, s.name) for s in plan.steps if s.op != "same"] == [("replace", "index"), ("update", "web")]
    updated = stack.seconds
    assert get_inside(swarm, port, "page two") == "page two"
    assert stack.record("web").id == service_id
    # the update sent the restart policy the provider had read back, with the delay it leaves unset: 0
    service.reload()
    assert service.attrs["Spec"]["TaskTemplate"]["RestartPolicy"]["Delay"] == 0
    assert [c.name for c in swarm.client.configs.list()] == [stack.record("index").inputs["name"]]

    # Unchanged: nothing to do.
    assert make_plan(stack.state, stack.graph(resources(port, "page two", "key-1"))).changes == []

    destroyed = stack.destroy()
    left = (swarm.client.services.list(), swarm.client.secrets.list(), swarm.client.configs.list(),
            [n.name for n in swarm.client.networks.list() if n.name == f"backend-{port}"],
            swarm.client.containers.list(all=True))
    assert left == ([], [], [], [], [])
    print(f"[swarm] create (network, secret, config, converged service) {created:.1f}s; config change "
          f"(replace + rolling update, converged) {updated:.1f}s; destroy {destroyed:.1f}s")


def test_a_failing_update_is_rolled_back_by_swarm_and_reported_and_the_next_run_tries_again(swarm, tmp_path):
    stack = Stack(swarm, tmp_path)
    port = PORTS[1]
    restart = {"condition": "any", "delay": "1s"}
    stack.up(*resources(port, "stable", "key-1", published=True, restart_policy=restart))
    assert get(swarm, port) == "stable"
    broken = resources(port, "stable", "key-1", healthcheck=["CMD", "false"], published=True, restart_policy=restart)
    with pytest.raises(ApplyFailed, match="web: service rollback completed") as failure:
        stack.up(*broken)
    rolled_back = stack.seconds
    # Swarm put the old task spec back and its task serves again.
    spec = swarm.client.services.get(stack.record("web").id).attrs["Spec"]["TaskTemplate"]["ContainerSpec"]
    assert spec["Healthcheck"]["Test"] != ["CMD", "false"]
    assert get(swarm, port) == "stable"
    # Pulumi keeps the new inputs with the error: the next run updates again (and fails again).
    record = stack.record("web")
    assert record.init_errors and record.inputs["taskSpec"]["containerSpec"]["healthcheck"]["tests"] == ["CMD", "false"]
    [step] = make_plan(stack.state, stack.graph(broken)).changes
    assert step.op == "update"
    # The fixed program converges and clears the error.
    stack.up(*resources(port, "stable", "key-1", published=True, restart_policy=restart))
    assert stack.record("web").init_errors == [] and get(swarm, port) == "stable"
    stack.destroy()
    print(f"[swarm] failing update rolled back by Swarm and reported in {rolled_back:.1f}s: {failure.value}")


def test_a_service_that_does_not_converge_is_deleted_and_the_run_fails(swarm, tmp_path):
    stack = Stack(swarm, tmp_path)
    port = PORTS[0]
    never = resources(port, "x", "key-1", healthcheck=["CMD", "false"])
    never[-1]["inputs"]["convergeConfig"] = {"delay": "1s", "timeout": "15s"}
    with pytest.raises(ApplyFailed, match=r"Service with ID \(\w+\) did not converge after 15s"):
        stack.up(*never)
    # resourceDockerServiceCreate deleted it; Pulumi records nothing for it.
    assert swarm.client.services.list() == []
    assert sorted(r.name for r in stack.state.live()) == ["api-key", "backend", "index"]
    stack.destroy()
    assert (swarm.client.secrets.list(), swarm.client.configs.list()) == ([], [])
    print(f"[swarm] service that never became healthy: deleted and reported after {stack.seconds:.1f}s")
