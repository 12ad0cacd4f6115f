"""A local Docker Swarm whose nodes are containers running their own dockerd
(stack_emulator/swarm_nodes.py), checked as a user of the swarm would: `docker node ls` / `docker
service ls` through the manager's DOCKER_HOST, HTTP from the host's loopback to ports that tasks
publish in host mode, node loss and return, and nothing left on the engine after teardown.

Cost on this 2-core machine (images built): the 3-node swarm once (~6 s, plus loading
the Debian base, 77 MB, into 3 nodes: 4-16 s), the 2-node swarms of the teardown tests (~6 s
each), the services (~5-10 s each); 62 s alone, about 70 s beside the swarm stack's start.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import docker.errors
import pytest
from docker.types import ServiceMode

from harness.waiting import wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docker"))
from docker_support import build_image  # noqa: E402
from swarm_support import SECOND, SERVICE_IMAGE, answer, http_service, leftovers, running_on  # noqa: E402

from stack_emulator import swarm_nodes  # noqa: E402
from stack_emulator.engine import engine_client  # noqa: E402
from stack_emulator.images import BASE_TAG  # noqa: E402


@pytest.fixture
def services(swarm):
    made = []
    yield made
    for s in made:
        s.remove()


def test_three_nodes_one_manager_two_workers_ready_with_their_labels(swarm):
    states = swarm.states()
    print(f"\n[swarm] nodes: { {i: (s['role'], s['state'], s['labels']) for i, s in states.items()} }")
    assert {i: s["role"] for i, s in states.items()} == {1: "manager", 2: "worker", 3: "worker"}
    assert all(s["state"] == "ready" and s["availability"] == "active" for s in states.values())
    assert {i: s["labels"] for i, s in states.items()} == {1: {}, 2: {}, 3: {"database": "true"}}

    # What an operator does after sourcing the stack's env file.
    out = subprocess.run(["docker", "node", "ls", "--format", "{{.Hostname}} {{.Status}} {{.ManagerStatus}}"],
                         env={"DOCKER_HOST": swarm.docker_host, "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, check=True).stdout.split("\n")
    assert sorted(filter(None, out)) == [f"{swarm.prefix}-node-1 Ready Leader", f"{swarm.prefix}-node-2 Ready ",
                                         f"{swarm.prefix}-node-3 Ready "]
    assert subprocess.run(["docker", "service", "ls"], env={"DOCKER_HOST": swarm.docker_host, "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True).returncode == 0


def test_every_node_has_the_images_under_the_hosts_ids_and_up_again_starts_a_stopped_node_and_loads_nothing(swarm):
    want = engine_client().images.get(SERVICE_IMAGE).id
    assert {n.index: n.client().images.get(SERVICE_IMAGE).id for n in swarm.nodes} == {1: want, 2: want, 3: want}

    swarm.kill(2)
    started = time.monotonic()
    again = swarm_nodes.up(swarm.prefix, nodes=3, managers=1, labels={3: {"database": "true"}},
                           images=[SERVICE_IMAGE], ports=[8080, 8081, 8082], run_dir=swarm.run_dir, heartbeat=1)
    took = time.monotonic() - started
    print(f"\n[swarm] up() on the swarm with node 2 killed: {took:.1f}s, loaded {again.transfer.loaded}")
    assert again.transfer.loaded == {1: [], 2: [], 3: []}
    assert again.transfer.skipped == {i: [SERVICE_IMAGE] for i in (1, 2, 3)}
    assert [(n.name, n.ip) for n in again.nodes] == [(n.name, n.ip) for n in swarm.nodes]
    states = again.states()
    assert {i: s["id"] for i, s in states.items()} == {i: s["id"] for i, s in swarm.states().items()}
    assert all(s["state"] == "ready" for s in states.values())
    assert swarm.node(2).client().info()["Swarm"]["LocalNodeState"] == "active"


def test_an_image_on_layers_a_node_loaded_travels_as_its_new_layers_and_a_node_that_lost_them_gets_it_whole(swarm):
    host = engine_client()
    node = swarm.node(2)
    tag = f"prediction-local/swarm-layers-test:{swarm.prefix}"
    try:
        # Two small layers on the Debian base, which the node loaded as an image of its own: the
        # base's folder there had another name (a digest of that image's config too), so it travels.
        build_image(host, f"{tag}-two",
                    f"FROM {BASE_TAG}\nRUN echo {swarm.prefix} > /one\nRUN echo {swarm.prefix} > /two\n")
        two = swarm.load_images([f"{tag}-two"], nodes=[2])
        # A new tag on it (a label): every layer is on the node now; only the top one's folder
        # (config-dependent, as above) travels.
        want = build_image(host, f"{tag}-label", f"FROM {tag}-two\nLABEL com.prediction.test=label\n")
        label = swarm.load_images([f"{tag}-label"], nodes=[2])
        assert node.client().images.get(f"{tag}-label").id == want
        assert label.tar_bytes < 1_000_000 < two.tar_bytes, (two.tar_bytes, label.tar_bytes)

        # The node deletes both, and with them their two layers: an image on those layers must reach
        # it whole, although this process recorded them as loaded there.
        for ref in (f"{tag}-label", f"{tag}-two"):
            node.client().images.remove(ref)
        want = build_image(host, f"{tag}-again", f"FROM {tag}-two\nLABEL com.prediction.test=again\n")
        whole = swarm.load_images([f"{tag}-again"], nodes=[2])
        assert node.client().images.get(f"{tag}-again").id == want
        print(f"\n[swarm] into node 2: an image on the Debian base {two.tar_bytes / 1e6:.0f} MB; a new tag of it "
              f"{label.tar_bytes / 1e3:.0f} kB; one on layers the node deleted {whole.tar_bytes / 1e6:.0f} MB "
              f"(sent again whole) in {whole.seconds:.1f}s")
        assert whole.tar_bytes > 10_000_000, whole.tar_bytes  # the Debian base layer too
    finally:
        for suffix in ("-again", "-label", "-two"):
            try:
                host.images.remove(f"{tag}{suffix}")
            except docker.errors.ImageNotFound:
                pass


def test_a_dnsrr_service_published_in_host_mode_answers_on_the_hosts_loopback_from_each_node(swarm, services):
    net = swarm.client().networks.create(f"{swarm.prefix}-test", driver="overlay", attachable=True)
    try:
        started = time.monotonic()
        web = http_service(swarm, "web", 8080, replicas=3, maxreplicas=1, networks=[net.name])
        services.append(web)
        wait_until(lambda: running_on(swarm, web) == [1, 2, 3], 60, "a task of web on each node")

        def every_node_answers():
            answers = {i: answer(swarm.url(i, 8080)) for i in (1, 2, 3)}
            return answers if all(answers.values()) else None

        answers = wait_until(every_node_answers, 30, "each node's task answering on the host's loopback")
        print(f"\n[swarm] 3 tasks answering from the host in {time.monotonic() - started:.1f}s: "
              f"{ {i: swarm.address(i, 8080) for i in (1, 2, 3)} }")
        assert answers == {i: f"{swarm.prefix}-node-{i}" for i in (1, 2, 3)}
        assert {swarm.address(i, 8080)[0] for i in (1, 2, 3)} == {"127.0.0.1"}

        # dnsrr: the service name resolves to every task's address on the overlay (no virtual IP).
        # (A node's DNS learns of the tasks on the others by gossip: an answer may lag a moment.)
        task = swarm.node(2).client().containers.list(filters={"label": "com.docker.swarm.service.name=web"})[0]
        resolved: dict = {}

        def every_task_resolved() -> bool:
            code, out = task.exec_run(["sh", "-c", "for n in web tasks.web; do "
                                       "echo $n $(getent ahostsv4 $n | awk '{print $1}' | sort -u); done"])
            assert code == 0, out
            resolved.update({line.split()[0]: line.split()[1:] for line in out.decode().splitlines()})
            return len(resolved["web"]) == 3 and resolved["web"] == resolved["tasks.web"]
        try:
            wait_until(every_task_resolved, 15, "web and tasks.web to resolve to the 3 tasks")
        finally:
            print(f"[swarm] resolved inside a task: {resolved}")
    finally:
        for s in services:
            s.remove()
        services.clear()
        wait_until(lambda: not swarm.node(1).client().containers.list(
            filters={"label": "com.docker.swarm.service.name=web"}), 30, "web's task on node 1 gone")
        net.remove()


def test_a_drained_worker_hands_its_task_to_the_other_and_takes_tasks_again_when_active(swarm, services):
    solo = http_service(swarm, "drained", 8081, replicas=1, constraints=["node.role == worker"])
    services.append(solo)
    [first] = wait_until(lambda: running_on(swarm, solo) or None, 60, "drained's task running")
    other = 5 - first
    started = time.monotonic()
    swarm.drain(first)
    wait_until(lambda: answer(swarm.url(other, 8081)) == f"{swarm.prefix}-node-{other}", 60,
               f"the task answering on node {other}")
    moved = time.monotonic() - started
    assert swarm.states()[first]["availability"] == "drain"
    assert answer(swarm.url(first, 8081)) is None
    swarm.activate(first)
    assert swarm.states()[first]["availability"] == "active"
    print(f"\n[swarm] drain node {first}: its task answered on node {other} after {moved:.1f}s")


def test_a_killed_worker_leaves_two_ready_its_task_runs_on_the_other_worker_and_the_node_rejoins(swarm, services):
    solo = http_service(swarm, "solo", 8082, replicas=1, constraints=["node.role == worker"])
    services.append(solo)
    [victim] = wait_until(lambda: running_on(swarm, solo) or None, 60, "solo's task running")
    other = 5 - victim
    ids = {i: s["id"] for i, s in swarm.states().items()}

    started = time.monotonic()
    swarm.kill(victim)
    try:
        down = swarm.wait(lambda s: s[victim]["state"] == "down", f"node {victim} down", 60)
        states = swarm.states()
        assert sorted(i for i, s in states.items() if s["state"] == "ready") == sorted({1, 2, 3} - {victim})
        wait_until(lambda: answer(swarm.url(other, 8082)) == f"{swarm.prefix}-node-{other}", 60,
                   f"solo's task answering on node {other}")
        moved = time.monotonic() - started
        # The node's agent reports the task's state to the manager after starting it: on a busy host the
        # manager may still say "starting" while the task already answers.
        wait_until(lambda: running_on(swarm, solo) == [other], 30, f"the manager to record solo running on node {other}")
    finally:
        # Whatever failed above, the module's later tests get their 3 nodes back.
        back = swarm.rejoin(victim)
    print(f"\n[swarm] kill node {victim}: down after {down:.1f}s, its task answered on node {other} after "
          f"{moved:.1f}s; rejoined (same id) in {back:.1f}s")
    states = swarm.states()
    assert all(s["state"] == "ready" for s in states.values())
    assert {i: s["id"] for i, s in states.items()} == ids, "a returning node resumes under its own id"
    assert states[3]["labels"] == {"database": "true"}


def test_a_restarted_manager_resumes_the_swarm_with_every_node_ready_under_its_id(swarm):
    ids = {i: s["id"] for i, s in swarm.states().items()}
    took = swarm.restart(1)
    print(f"\n[swarm] restart of the manager: it and both workers ready again after {took:.1f}s")
    states = swarm.states()
    assert all(s["state"] == "ready" for s in states.values())
    assert {i: s["id"] for i, s in states.items()} == ids
    assert states[3]["labels"] == {"database": "true"}


def test_docker_host_pointing_at_a_node_is_refused_as_the_host_engine(swarm, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", swarm.docker_host)
    with pytest.raises(swarm_nodes.SwarmError, match="inside swarm node"):
        swarm_nodes.attach(swarm.prefix)


def test_down_leaves_no_container_network_volume_or_folder(swarm_engine, run_dir, prefix_for):
    prefix = prefix_for("gone")
    sw = swarm_nodes.up(prefix, nodes=2, images=[BASE_TAG], ports=[8080], run_dir=run_dir / prefix)
    try:
        service = sw.client().services.create(BASE_TAG, name="sleeper", command=["sleep", "infinity"],
                                              mode=ServiceMode("replicated", replicas=2), stop_grace_period=SECOND)
        wait_until(lambda: len([t for t in service.tasks() if t["Status"]["State"] == "running"]) == 2, 60,
                   "2 sleeper tasks running")
        assert len(leftovers(prefix)) == 6  # 2 containers, 2 networks, 2 volumes
    finally:
        removed = swarm_nodes.down(prefix, run_dir=run_dir / prefix)
    print(f"\n[swarm] down: {removed}")
    assert leftovers(prefix) == []
    assert not (run_dir / prefix).exists()
    assert swarm_nodes.down(prefix, run_dir=run_dir / prefix) == []


def test_an_up_that_fails_leaves_nothing_and_names_the_cause(swarm_engine, run_dir, prefix_for):
    prefix = prefix_for("fails")
    with pytest.raises(swarm_nodes.SwarmError, match="no-such-image:for-swarm-test is not on the host engine"):
        swarm_nodes.up(prefix, nodes=2, images=["no-such-image:for-swarm-test"], run_dir=run_dir / prefix)
    assert leftovers(prefix) == []
    assert not (run_dir / prefix).exists()
    with pytest.raises(docker.errors.NotFound):
        engine_client().containers.get(f"{prefix}-node-1")
