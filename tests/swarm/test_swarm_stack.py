"""The swarm stack (Pulumi.swarm.yaml) on a local 3-node Swarm, made by the stack emulator as
`make stack-up STACK=swarm` makes it, under a steady stream of predictions through the gateway
(published on the manager, reached on this machine's loopback). Every test prints its numbers and
leaves the stack as the stack file describes it (3 replicas, every node active)."""
from __future__ import annotations

import os
import re
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests/docker"))

from docker_support import IRIS, StackClient, derived_image, exec_lines, missing_rows  # noqa: E402
from harness.waiting import wait_until  # noqa: E402

from stack_emulator import stack as emulator  # noqa: E402
from stack_emulator.values import reveal  # noqa: E402

pytestmark = pytest.mark.slow

DATABASE_NODE = emulator.DATABASE_NODE
WORKER = 3  # the worker that does not keep the database


class SwarmStack(StackClient):
    """A running swarm stack: services by logical name, their tasks' containers on their nodes."""

    def service(self, logical: str):
        r = next(r for r in self.run.state.live() if r.name == logical and r.type == emulator.SERVICE)
        return self.run.swarm.client().services.get(reveal(r.inputs)["name"])

    def tasks(self, logical: str, state: str = "running") -> list[dict]:
        return [t for t in self.service(logical).tasks(filters={"desired-state": "running"})
                if t["Status"]["State"] == state]

    def nodes_of(self, logical: str) -> list[int]:
        ids = {v["id"]: i for i, v in self.run.swarm.states().items()}
        return sorted(ids[t["NodeID"]] for t in self.tasks(logical) if t.get("NodeID") in ids)

    def task_containers(self, logical: str) -> list:
        """The running containers of a service's tasks, each on its own node's engine."""
        out = []
        for index in self.nodes_of(logical):
            client = self.run.swarm.node(index).client()
            out += client.containers.list(filters={"label": f"com.docker.swarm.service.name="
                                                            f"{self.service(logical).name}"})
        return out

    def up(self, config: dict | None = None, replace: tuple[str, ...] = ()):
        """`pulumi up`, then until every slot runs a task of the service's new spec: the provider may
        report it converged while Swarm still rolls the last slots (per slot it counts a running old
        task as converged until that slot's new task exists: resourceDockerServiceUpdateRefreshFunc)."""
        try:
            return super().up(config=config, replace=replace)
        finally:
            self.settle()

    def settle(self, timeout: float = 180, update_ended: bool = False) -> None:
        """Until the service runs its replica count of tasks of its current spec, none starting. With
        ``update_ended``, also until Swarm has ended the update: it keeps watching the last task for the
        monitor window (the healthcheck's time to fail + 10 s) before it calls the update completed, and
        a task that fails inside that window rolls the whole update back."""
        def done():
            service = self.service("service")
            want = service.attrs["Spec"]["Mode"]["Replicated"]["Replicas"]
            spec = {k: v for k, v in service.attrs["Spec"]["TaskTemplate"].items() if k != "Runtime"}
            running = self.tasks("service")
            current = [t for t in running if {k: v for k, v in t["Spec"].items() if k != "Runtime"} == spec]
            state = (service.attrs.get("UpdateStatus") or {}).get("State")
            return (len(current) == len(running) == want and not self.tasks("service", "starting")
                    and not (update_ended and state in ("updating", "rollback_started")))
        wait_until(done, timeout, "Swarm to finish updating the service")

    def wait_whole(self, timeout: float = 120) -> None:
        """Until every service of the stack runs all its tasks: its replica count, or for a global one a
        task on every ready, active node (what the healthcheck playbook checks). A node that was drained
        or lost gets its global tasks (node-exporter) back some seconds after it returns."""
        client = self.run.swarm.client()
        # (a service recorded as not run has no id: Grafana, which has no stand-in here)
        names = [reveal(r.inputs)["name"] for r in self.run.state.live() if r.type == emulator.SERVICE and r.id]

        def whole():
            nodes = sum(1 for n in client.nodes.list()
                        if n.attrs["Status"]["State"] == "ready" and n.attrs["Spec"]["Availability"] == "active")
            short = []
            for name in names:
                service = client.services.get(name)
                mode = service.attrs["Spec"]["Mode"]
                want = mode["Replicated"]["Replicas"] if "Replicated" in mode else nodes
                running = sum(1 for t in service.tasks(filters={"desired-state": "running"})
                              if t["Status"]["State"] == "running")
                if running != want:
                    short.append(f"{name} {running}/{want}")
            seen[:] = short
            return not short
        seen: list[str] = []
        try:
            wait_until(whole, timeout, "every service of the stack to run all its tasks")
        except BaseException:  # pytest's Failed: say which
            print(f"\n[swarm] services short of tasks: {seen}")
            raise

    def put_a_task_on(self, node: int) -> None:
        """Swarm does not move tasks back to a node that returns. One more replica goes to the node with
        the fewest of the service's tasks (the spread strategy), and scaling back in removes one where
        the most run (swarmkit's replicated orchestrator), so the node keeps its new task."""
        if node in self.nodes_of("service"):
            return
        service = self.service("service")
        want = service.attrs["Spec"]["Mode"]["Replicated"]["Replicas"]
        service.scale(want + 1)
        wait_until(lambda: node in self.nodes_of("service") and len(self.nodes_of("service")) == want + 1, 120,
                   f"a task on node {node}")
        self.service("service").scale(want)
        wait_until(lambda: len(self.tasks("service")) == want, 120, f"{want} tasks again")
        assert node in self.nodes_of("service"), self.nodes_of("service")

    def service_image(self) -> str:
        return self.service("service").attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]

    def container(self, logical: str):
        if logical == "ops-container":
            return self.run.swarm.client().containers.get(self.run.container(logical))
        [c] = self.task_containers(logical)[:1]
        return c


@pytest.fixture(scope="session")
def swarm_stack(swarm_stack_started):
    """The stack conftest.py started in the background (removed there, after the last test)."""
    try:
        run, waited = swarm_stack_started.get()
    except emulator.StackError as exc:
        pytest.fail(str(exc))
    t = run.swarm.timings
    print(f"\n[swarm] stack {run.prefix} up in {swarm_stack_started.seconds:.0f}s beside the node tests (nodes "
          f"{t.get('total', 0):.0f}s; apply {run.apply_seconds:.0f}s), {waited:.0f}s of it waited for here; "
          f"load average {os.getloadavg()[0]:.1f}")
    return SwarmStack(run)


def settled_rows(stack) -> int:
    from docker_support import settled_rows as rows
    return rows(stack)


def test_predictions_over_https_rows_in_hypertables_and_every_task_scraped(swarm_stack):
    r = swarm_stack.predict()
    assert r.status_code == 200 and r.json()["predictions"] == ["setosa"], r.text
    assert r.headers["Strict-Transport-Security"].startswith("max-age=")
    assert len(swarm_stack.nodes_of("service")) == 3
    hypertables = {row[0] for row in swarm_stack.sql("SELECT hypertable_name FROM timescaledb_information.hypertables")}
    assert {"predictions", "prediction_metrics"} <= hypertables
    wait_until(lambda: int(swarm_stack.scalar("SELECT count(*) FROM predictions")) > 0, 30, "a prediction row")
    tasks = {f"{t['NetworksAttachments'][0]['Addresses'][0].split('/')[0]}" for t in swarm_stack.tasks("service")}
    wait_until(lambda: {r["metric"]["instance"].rsplit(":", 1)[0] for r in swarm_stack.promql(
        'up{job="prediction_service"} == 1')} >= tasks or None, 60, "Prometheus to scrape every task")
    print(f"\n[swarm] replicas on nodes {swarm_stack.nodes_of('service')}, database on node "
          f"{swarm_stack.nodes_of('database-container')}")
    assert swarm_stack.nodes_of("database-container") == [DATABASE_NODE]


def test_no_secret_in_any_task_environment_only_files_readable_by_the_process(swarm_stack):
    secret_values = {swarm_stack.api_key, swarm_stack.env["PREDICTION_DB_PASSWORD"]}
    checked = 0
    for logical in ("service", "database-container", "gateway-container"):
        for c in swarm_stack.task_containers(logical):
            env = "\n".join(c.attrs["Config"]["Env"])
            assert not any(v in env for v in secret_values), f"{c.name}: a secret in its environment"
            listing = exec_lines(c, ["sh", "-c", "stat -c '%a %u %n' /run/secrets/* /etc/nginx/tls/server.key "
                                                 "2>/dev/null; true"])  # not every task has both
            files = [line.split() for line in listing if line.startswith(("400 ", "600 "))]
            assert files, f"{c.name}: no secret file: {listing}"
            checked += len(files)
            if logical == "service":
                [uid] = exec_lines(c, ["id", "-u"])
                assert all(f[1] == uid and f[0] == "400" for f in files), (uid, files)
    print(f"\n[swarm] {checked} secret files checked (0400, the process's user), no secret in any task's environment")


def test_a_rolling_update_to_a_new_image_and_back_loses_no_request_and_no_row(swarm_stack):
    new_image = derived_image(swarm_stack, "1.5.0", ["LABEL com.prediction.release=swarm-b"])
    stack_image = swarm_stack.service_image()  # the program pins images by id
    before = settled_rows(swarm_stack)
    figures, back = [], False
    try:
        with swarm_stack.load() as load:
            load.wait_for(30)
            for config in ({"service": {"image": "prediction-service:1.5.0"}}, {}):
                started = time.monotonic()
                run = swarm_stack.up(config=config)
                back = not config
                figures.append((time.monotonic() - started, sorted(s.name for s in run.plan.changes if s.op == "update"),
                                {t["Spec"]["ContainerSpec"]["Image"] for t in swarm_stack.tasks("service")}))
                load.wait_for(30)
        lost = before + load.ok - settled_rows(swarm_stack)
        print("\n[swarm] rolling update to prediction-service:1.5.0 and back: " + ", ".join(
            f"{took:.0f}s (plan: update {updated})" for took, updated, _ in figures)
            + f"; {len(load.results)} requests, {len(load.failed)} failed, {lost} rows lost")
        [(_, there, images_there), (_, again, images_back)] = figures
        assert "service" in there and "service" in again
        assert images_there == {new_image} and images_back == {stack_image}, figures
        assert not load.failed and lost == 0, load.failed[:5]
    finally:
        if not back:
            swarm_stack.up(config={})


def test_an_image_whose_healthcheck_fails_is_rolled_back_by_swarm_while_the_old_one_serves(swarm_stack):
    # It serves nothing, so its healthcheck never passes: the new task turns unhealthy within the
    # update's monitor window and Swarm rolls the update back by itself. It exits when Swarm stops it
    # (a PID 1 that ignored SIGTERM would hold the rollback for the replicas' 45 s stop grace period:
    # Swarm calls the task failed once its container has stopped).
    derived_image(swarm_stack, "1.6.0-broken", ['CMD ["sh", "-c", "trap \'exit 143\' TERM; sleep infinity & wait"]'])
    before = {t["Spec"]["ContainerSpec"]["Image"] for t in swarm_stack.tasks("service")}
    try:
        with swarm_stack.load() as load:
            load.wait_for(30)
            started = time.monotonic()
            # pulumi-docker waits for the update (converge_config) and reports Swarm's rollback as an
            # error: its slot count sees the new task, still starting, in place of the old one
            # (resourceDockerServiceUpdateRefreshFunc, tasksBySlot), until the update state says
            # rollback_completed.
            with pytest.raises(emulator.StackError) as failed:
                swarm_stack.up(config={"service": {"image": "prediction-service:1.6.0-broken"}})
            took = time.monotonic() - started
            # The provider calls the rollback completed once every slot runs again (rollback_started and
            # all replicas running), as here: Swarm itself says rollback_completed only after the
            # rollback's monitor window (31 s more), which the `pulumi up` below ends anyway.
            state = swarm_stack.service("service").attrs.get("UpdateStatus", {}).get("State")
            load.wait_for(30)
        now = {t["Spec"]["ContainerSpec"]["Image"] for t in swarm_stack.tasks("service")}
        print(f"\n[swarm] an image failing its healthcheck: pulumi up failed after {took:.0f}s with "
              f"'{str(failed.value).split(' — ')[0]}'; Swarm's update state {state}; {len(load.results)} requests, "
              f"{len(load.failed)} failed; tasks on the old image again: {now == before}")
        assert "service rollback completed" in str(failed.value)
        assert state in ("rollback_started", "rollback_completed") and now == before
        assert not load.failed, load.failed[:5]
    finally:
        swarm_stack.up(config={})


def test_a_worker_drained_under_load_hands_its_task_to_the_others_without_a_failed_request(swarm_stack):
    swarm = swarm_stack.run.swarm
    swarm_stack.put_a_task_on(WORKER)
    try:
        with swarm_stack.load() as load:
            load.wait_for(30)
            started = time.monotonic()
            swarm.drain(WORKER)
            wait_until(lambda: WORKER not in swarm_stack.nodes_of("service")
                       and len(swarm_stack.nodes_of("service")) == 3, 120, "the drained node's tasks elsewhere")
            took = time.monotonic() - started
            load.wait_for(30)
        print(f"\n[swarm] worker {WORKER} drained: its task moved in {took:.0f}s; {len(load.results)} requests, "
              f"{len(load.failed)} failed; replicas now on nodes {swarm_stack.nodes_of('service')}")
        assert not load.failed, f"a drain moves tasks without failing a request: {load.failed[:5]}"
    finally:
        swarm.activate(WORKER)
        swarm_stack.wait_whole()


def test_scaling_three_to_six_to_three_under_load(swarm_stack):
    figures = []
    back = False
    try:
        for count in (6, 3):
            with swarm_stack.load() as load:
                load.wait_for(30)
                started = time.monotonic()
                run = swarm_stack.up(config={"service": {"replicas": count}})
                took = time.monotonic() - started
                load.wait_for(30)
            figures.append((count, sorted(s.name for s in run.plan.changes), took, len(load.results),
                            len(load.failed)))
            assert len(swarm_stack.tasks("service")) == count
            back = count == 3
    finally:
        if not back:  # 3 is the stack file's count
            swarm_stack.up(config={})
    print("\n[swarm] replicas 3 -> 6 -> 3: " + "; ".join(
        f"{c}: plan {p} in {t:.0f}s, {n} requests, {f} failed" for c, p, t, n, f in figures))
    assert all(p == ["service"] and f == 0 for _, p, _, _, f in figures)


def test_a_worker_killed_under_load_its_task_moves_and_every_answered_row_is_kept(swarm_stack):
    swarm = swarm_stack.run.swarm
    swarm_stack.put_a_task_on(WORKER)
    # Not inside an update: a task lost within its monitor window would roll the update back.
    swarm_stack.settle(update_ended=True)
    try:
        with swarm_stack.load() as load:
            load.wait_for(200)
            started = time.monotonic()
            swarm.kill(WORKER)
            seen: dict = {}

            def moved():
                seen["tasks on nodes"], seen["nodes"] = swarm_stack.nodes_of("service"), swarm.states()
                return WORKER not in seen["tasks on nodes"] and len(seen["tasks on nodes"]) == 3
            try:
                wait_until(moved, 180, "the killed node's task elsewhere")
            except BaseException:  # pytest's Failed: say what Swarm showed last
                print(f"\n[swarm] after the kill: {seen}")
                raise
            took = time.monotonic() - started
            load.wait_for(50)
        # The swarm stack sets PREDICTION_DB_ACK_AFTER_WRITE: a replica answers once the request's row is
        # committed, so a killed node takes no answered row with it (without it, the rows it queued
        # since its last write, up to two flush intervals of its share, were lost: 13–161 measured).
        lost = missing_rows(swarm_stack, load)
        print(f"\n[swarm] worker {WORKER} killed: its task moved in {took:.0f}s, {len(load.failed)} failed of "
              f"{len(load.results)} requests; {len(lost)} of {len(load.answered_ids)} answered requests without their row")
        # A killed node takes its in-flight requests with it, and nginx tries its address until the
        # connect times out; the bound: what the load sends in the few seconds that takes.
        assert len(load.failed) <= 20, load.failed[:10]
        assert not lost, f"answered, but no row: {lost[:5]}"
    finally:
        swarm.rejoin(WORKER)
        wait_until(lambda: all(st["state"] == "ready" for st in swarm.states().values()), 120, "every node ready")
        swarm_stack.wait_whole()


def test_the_database_waits_for_its_node_and_comes_back_with_every_row(swarm_stack):
    swarm = swarm_stack.run.swarm
    swarm_stack.predict({**IRIS, "sepal_width": 3.33})
    rows = settled_rows(swarm_stack)
    [old_task] = swarm_stack.tasks("database-container")
    started, wall = time.monotonic(), time.time()
    swarm.drain(DATABASE_NODE)
    try:
        wait_until(lambda: not swarm_stack.tasks("database-container"), 60, "the database task stopped")
        time.sleep(5)
        pending = [t for t in swarm_stack.service("database-container").tasks(filters={"desired-state": "running"})
                   if t["Status"]["State"] == "pending"]
        assert not swarm_stack.tasks("database-container"), "the database must not start on another node"
        print(f"\n[swarm] database node drained: no task elsewhere after 5 s ({len(pending)} pending: "
              f"{pending[0]['Status'].get('Err', '') if pending else ''})")
    finally:
        swarm.activate(DATABASE_NODE)
    phases = {"node active": time.monotonic() - started}
    wait_until(lambda: swarm_stack.nodes_of("database-container") == [DATABASE_NODE], 120,
               "the database back on its node")
    phases["database running"] = time.monotonic() - started
    wait_until(lambda: swarm_stack.predict().status_code == 200, 90, "predictions again")
    phases["a prediction answered"] = time.monotonic() - started
    swarm_stack.wait_whole()
    phases["every service whole"] = time.monotonic() - started
    after = settled_rows(swarm_stack)
    print(f"[swarm] database back: rows {rows} before, {after} after; seconds since the drain: "
          + ", ".join(f"{k} {v:.0f}" for k, v in phases.items()))
    print("[swarm] database tasks, seconds since the drain: " + database_timeline(swarm_stack, old_task["ID"], wall))
    assert after >= rows


def database_timeline(stack, old_id: str, since: float) -> str:
    """When the old task stopped, and when the new one was created, started its container and turned
    healthy (Swarm calls a task with a healthcheck running only once it is healthy)."""
    def at(stamp: str) -> str:  # Docker's RFC 3339 time, in seconds after ``since``
        return f"{datetime.fromisoformat(stamp).timestamp() - since:.1f}"

    [old] = stack.service("database-container").tasks(filters={"id": old_id})
    [new] = stack.tasks("database-container")
    container = stack.run.swarm.node(DATABASE_NODE).client().api.inspect_container(
        new["Status"]["ContainerStatus"]["ContainerID"])
    health = container["State"].get("Health", {}).get("Log", [])
    return (f"old {old['Status']['State']} at {at(old['Status']['Timestamp'])}; new created {at(new['CreatedAt'])}, "
            f"container started {at(container['State']['StartedAt'])}, "
            f"health probes ended {[at(h['End']) + ':' + str(h['ExitCode']) for h in health]}, "
            f"running at {at(new['Status']['Timestamp'])}")


def test_a_task_stopped_outside_swarm_with_exit_0_is_started_again(swarm_stack):
    """As when its node's engine stops it: SIGTERM, a clean exit. Under the restart condition
    "on-failure" Swarm never replaces such a task, and the migrate job stayed at 0/1 (runtime.py)."""
    [job] = swarm_stack.task_containers("service-migrate")
    before = {t["ID"] for t in swarm_stack.tasks("service-migrate")}
    started = time.monotonic()
    job.stop(timeout=10)
    job.reload()
    assert job.attrs["State"]["ExitCode"] == 0, job.attrs["State"]
    wait_until(lambda: {t["ID"] for t in swarm_stack.tasks("service-migrate")} - before, 90,
               "a new migrate task, migrated and healthy")
    print(f"\n[swarm] migrate task stopped (exit 0): a new one healthy after {time.monotonic() - started:.0f}s")


def test_ops_playbooks_against_the_swarm_stack(swarm_stack):
    took: dict[str, float] = {}

    def playbook(name: str):
        started = time.monotonic()
        run = swarm_stack.playbook(f"{name}.yml").ok()
        took[name] = took.get(name, 0) + time.monotonic() - started
        return run

    def database_tasks() -> set[str]:
        return {t["ID"] for t in swarm_stack.tasks("database-container")}

    health = playbook("healthcheck")
    [summary] = [m for m in health.messages() if m.startswith("All checked components are up")]
    services = re.findall(r"service (\S+?)[,.]", summary)
    assert {f"{swarm_stack.prefix}-{s}" for s in ("service", "timescaledb", "redis", "gateway", "prometheus",
                                                  "migrate")} <= set(services), summary
    before = database_tasks()
    tune = playbook("db-tune")
    # The stack's database starts with the image's defaults, some of them restart-only (shared_buffers):
    # the role restarts it as a new task (roles/swarm_service_restart) and checks the values with SHOW.
    restarted = any(m.startswith("PostgreSQL restart required") for m in tune.messages())
    assert restarted and database_tasks() and not database_tasks() & before, (tune.messages(), before)
    assert playbook("db-tune").changed == 0
    rows = settled_rows(swarm_stack)
    backup = playbook("backup")
    # restore.yml restarts the migrate service for the roles, then replaces the database with the dump.
    restore = playbook("restore")
    restored = int(swarm_stack.scalar("SELECT count(*) FROM predictions"))
    print(f"\n[swarm] playbooks: healthcheck {len(services)} services UP; db-tune changed {tune.changed} (the "
          f"database restarted as a new task), then 0; backup {backup.changed} changes; restore {restore.changed} "
          f"changes, {restored} rows of {rows} backed up; seconds: "
          + ", ".join(f"{name} {seconds:.0f}" for name, seconds in took.items()))
    assert restored >= rows
    wait_until(lambda: swarm_stack.predict().status_code == 200, 60, "predictions after the restore")
