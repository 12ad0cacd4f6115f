"""The swarm stack (Pulumi.swarm.yaml) on a local 3-node Swarm, made by the stack emulator as
`make stack-up STACK=swarm` makes it, under a steady stream of predictions through the gateway
(published on the manager, reached on this machine's loopback). Every test prints its numbers and
leaves the stack as the stack file describes it (3 replicas, every node active)."""
from __future__ import annotations

import os
import re
import secrets
import shutil
import sys
import tempfile
import time
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
        """`pulumi up`, then until Swarm has finished the service's update: the provider may report it
        converged while Swarm still rolls the last slots (per slot it counts a running old task as
        converged until that slot's new task exists: resourceDockerServiceUpdateRefreshFunc)."""
        try:
            return super().up(config=config, replace=replace)
        finally:
            self.settle()

    def settle(self, timeout: float = 180) -> None:
        def done():
            service = self.service("service")
            state = (service.attrs.get("UpdateStatus") or {}).get("State")
            want = service.attrs["Spec"]["Mode"]["Replicated"]["Replicas"]
            return (state not in ("updating", "rollback_started")
                    and len(self.tasks("service")) == want and len(self.tasks("service", "starting")) == 0)
        wait_until(done, timeout, "Swarm to finish updating the service")

    def service_image(self) -> str:
        return self.service("service").attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]

    def container(self, logical: str):
        if logical == "ops-container":
            return self.run.swarm.client().containers.get(self.run.container(logical))
        [c] = self.task_containers(logical)[:1]
        return c


@pytest.fixture(scope="session")
def swarm_stack(swarm_engine):
    var_dir = Path(tempfile.mkdtemp(prefix="swarm-stack-"))
    prefix = f"t{secrets.token_hex(2)}-sw"
    started = time.monotonic()
    try:
        run = emulator.up("swarm", prefix=prefix, ports="free", var_dir=var_dir, quiet=True, swarm_heartbeat=1)
    except emulator.StackError as exc:
        pytest.fail(str(exc))
    t = run.swarm.timings
    print(f"\n[swarm] stack {prefix} up in {time.monotonic() - started:.0f}s (nodes {t.get('total', 0):.0f}s; "
          f"apply {run.apply_seconds:.0f}s); load average {os.getloadavg()[0]:.1f}")
    client = SwarmStack(run)
    yield client
    try:
        emulator.down("swarm", var_dir=var_dir, unprotect=True, quiet=True)
    except emulator.StackError as exc:
        print(f"[swarm] stack-down failed ({exc}); removing the nodes")
    finally:
        from stack_emulator import swarm_nodes
        swarm_nodes.down(prefix)
        shutil.rmtree(var_dir, ignore_errors=True)


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


def test_a_rolling_update_to_a_new_image_loses_no_request_and_no_row(swarm_stack):
    derived_image(swarm_stack, "1.5.0", ["LABEL com.prediction.release=swarm-b"])
    before = settled_rows(swarm_stack)
    try:
        with swarm_stack.load() as load:
            load.wait_for(30)
            started = time.monotonic()
            run = swarm_stack.up(config={"service": {"image": "prediction-service:1.5.0"}})
            took = time.monotonic() - started
            load.wait_for(30)
        lost = before + load.ok - settled_rows(swarm_stack)
        updated = sorted(s.name for s in run.plan.changes if s.op == "update")
        print(f"\n[swarm] rolling update to prediction-service:1.5.0 in {took:.0f}s (plan: update {updated}): "
              f"{len(load.results)} requests, {len(load.failed)} failed, {lost} rows lost")
        assert "service" in updated and not load.failed and lost == 0, load.failed[:5]
    finally:
        swarm_stack.up(config={})


def test_an_image_whose_healthcheck_fails_is_rolled_back_by_swarm_while_the_old_one_serves(swarm_stack):
    # It serves nothing, so its healthcheck never passes: the new task turns unhealthy within the
    # update's monitor window and Swarm rolls the update back by itself.
    derived_image(swarm_stack, "1.6.0-broken", ['CMD ["sleep", "infinity"]'])
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
            # The provider also calls it completed once a rollback has every slot running again, while
            # Swarm may still be finishing it.
            state = wait_until(lambda: (s := swarm_stack.service("service").attrs.get("UpdateStatus", {})
                                        .get("State")) != "rollback_started" and s, 120, "Swarm to end the rollback")
            load.wait_for(30)
        now = {t["Spec"]["ContainerSpec"]["Image"] for t in swarm_stack.tasks("service")}
        print(f"\n[swarm] an image failing its healthcheck: pulumi up failed after {took:.0f}s with "
              f"'{str(failed.value).split(' — ')[0]}'; Swarm's update state {state}; {len(load.results)} requests, "
              f"{len(load.failed)} failed; tasks on the old image again: {now == before}")
        assert "service rollback completed" in str(failed.value)
        assert state == "rollback_completed" and now == before
        assert not load.failed, load.failed[:5]
    finally:
        swarm_stack.up(config={})


def test_a_worker_drained_then_killed_its_tasks_move_and_answered_rows_are_kept(swarm_stack):
    swarm = swarm_stack.run.swarm
    worker = 3  # the worker that does not keep the database
    try:
        with swarm_stack.load() as load:
            load.wait_for(30)
            started = time.monotonic()
            swarm.drain(worker)
            wait_until(lambda: worker not in swarm_stack.nodes_of("service")
                       and len(swarm_stack.nodes_of("service")) == 3, 120, "the drained node's tasks elsewhere")
            drained = (time.monotonic() - started, len(load.failed))
            swarm.activate(worker)
            # Swarm does not move tasks back by itself: scale out and in to have one on the worker again.
            # A forced update places the tasks anew; it is finished before the kill, so the kill does not
            # land inside an update (whose failure action, a rollback, would move tasks once more).
            swarm_stack.service("service").force_update()
            wait_until(lambda: worker in swarm_stack.nodes_of("service"), 180, "a task on the worker again")
            swarm_stack.settle()
            load.wait_for(200)
            failed_before, started = len(load.failed), time.monotonic()
            swarm.kill(worker)
            seen: dict = {}

            def moved():
                seen["tasks on nodes"], seen["nodes"] = swarm_stack.nodes_of("service"), swarm.states()
                return worker not in seen["tasks on nodes"] and len(seen["tasks on nodes"]) == 3
            try:
                wait_until(moved, 180, "the killed node's task elsewhere")
            except BaseException:  # pytest's Failed: say what Swarm showed last
                print(f"\n[swarm] after the kill: {seen}")
                raise
            killed = (time.monotonic() - started, len(load.failed) - failed_before)
            load.wait_for(50)
        # The swarm stack sets PREDICTION_DB_ACK_AFTER_WRITE: a replica answers once the request's row is
        # committed, so a killed node takes no answered row with it (without it, the rows it queued
        # since its last write, up to two flush intervals of its share, were lost: 13–161 measured).
        lost = missing_rows(swarm_stack, load)
        print(f"\n[swarm] worker {worker} drained: its task moved in {drained[0]:.0f}s, {drained[1]} failed; "
              f"killed: its task moved in {killed[0]:.0f}s, {killed[1]} failed (of {len(load.results)} requests); "
              f"{len(lost)} of {len(load.answered_ids)} answered requests without their row")
        assert drained[1] == 0, f"a drain moves tasks without failing a request: {load.failed[:5]}"
        # A killed node takes its in-flight requests with it, and nginx tries its address until the
        # connect times out; the bound: what the load sends in the few seconds that takes.
        assert killed[1] <= 20, load.failed[:10]
        assert not lost, f"answered, but no row: {lost[:5]}"
    finally:
        swarm.rejoin(worker)
        wait_until(lambda: all(st["state"] == "ready" for st in swarm.states().values()), 120, "every node ready")


def test_scaling_three_to_six_to_three_under_load(swarm_stack):
    figures = []
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
    finally:
        swarm_stack.up(config={})
    print("\n[swarm] replicas 3 -> 6 -> 3: " + "; ".join(
        f"{c}: plan {p} in {t:.0f}s, {n} requests, {f} failed" for c, p, t, n, f in figures))
    assert all(p == ["service"] and f == 0 for _, p, _, _, f in figures)


def test_the_database_waits_for_its_node_and_comes_back_with_every_row(swarm_stack):
    swarm = swarm_stack.run.swarm
    swarm_stack.predict({**IRIS, "sepal_width": 3.33})
    rows = settled_rows(swarm_stack)
    started = time.monotonic()
    swarm.drain(DATABASE_NODE)
    try:
        wait_until(lambda: not swarm_stack.tasks("database-container"), 60, "the database task stopped")
        time.sleep(10)
        pending = [t for t in swarm_stack.service("database-container").tasks(filters={"desired-state": "running"})
                   if t["Status"]["State"] == "pending"]
        assert not swarm_stack.tasks("database-container"), "the database must not start on another node"
        print(f"\n[swarm] database node drained: no task elsewhere after 10 s ({len(pending)} pending: "
              f"{pending[0]['Status'].get('Err', '') if pending else ''})")
    finally:
        swarm.activate(DATABASE_NODE)
    wait_until(lambda: swarm_stack.nodes_of("database-container") == [DATABASE_NODE], 120,
               "the database back on its node")
    wait_until(lambda: swarm_stack.predict().status_code == 200, 90, "predictions again")
    after = settled_rows(swarm_stack)
    print(f"[swarm] database back after {time.monotonic() - started:.0f}s: rows {rows} before, {after} after")
    assert after >= rows


def test_ops_playbooks_against_the_swarm_stack(swarm_stack):
    health = swarm_stack.playbook("healthcheck.yml").ok()
    [summary] = [m for m in health.messages() if m.startswith("All checked components are up")]
    services = re.findall(r"service (\S+?)[,.]", summary)
    assert {f"{swarm_stack.prefix}-{s}" for s in ("service", "timescaledb", "redis", "gateway", "prometheus",
                                                  "migrate")} <= set(services), summary
    tune = swarm_stack.playbook("db-tune.yml").ok()
    assert swarm_stack.playbook("db-tune.yml").ok().changed == 0
    rows = settled_rows(swarm_stack)
    backup = swarm_stack.playbook("backup.yml").ok()
    # restore.yml restarts the migrate service for the roles, then replaces the database with the dump.
    restore = swarm_stack.playbook("restore.yml").ok()
    restored = int(swarm_stack.scalar("SELECT count(*) FROM predictions"))
    print(f"\n[swarm] playbooks: healthcheck {len(services)} services UP; db-tune changed {tune.changed}, then 0; "
          f"backup {backup.changed} changes; restore {restore.changed} changes, {restored} rows of {rows} backed up")
    assert restored >= rows
    wait_until(lambda: swarm_stack.predict().status_code == 200, 60, "predictions after the restore")
