"""The Swarm suite: Docker Swarms of containers that run their own dockerd
(stack_emulator/swarm_nodes.py) on this machine's real engine, under unique name prefixes, with
their sockets in a short temporary folder; each swarm is removed after its last test, also when a
test fails.

Without an engine, or without what the node image needs, the suite is skipped with one line;
under CI (CI=true) it fails instead.
"""
from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from swarm_support import SERVICE_IMAGE, leftovers  # noqa: E402

from stack_emulator import stack as emulator  # noqa: E402
from stack_emulator import swarm_nodes  # noqa: E402
from stack_emulator.engine import EngineMissing, engine_client  # noqa: E402
from harness.suite_skip import fold  # noqa: E402
from stack_emulator.images import ImageError  # noqa: E402


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """The tests the missing engine skips make one -ra line, at the skip below (harness/suite_skip.py)."""
    report = yield
    fold(report, __file__, "Swarm suite skipped: ")
    return report


@pytest.fixture(scope="session")
def swarm_engine():
    """The host engine with the node image and SERVICE_IMAGE built; else one skip line (a failure under CI)."""
    try:
        client = engine_client()
        started = time.monotonic()
        swarm_nodes.node_image(client)  # built on SERVICE_IMAGE, the Debian base
        print(f"\n[swarm] node image and {SERVICE_IMAGE} ready in {time.monotonic() - started:.0f}s")
        return client
    except (EngineMissing, ImageError, swarm_nodes.SwarmError) as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the Swarm suite is mandatory under CI: {exc}")
        pytest.skip(f"Swarm suite skipped: {exc}")


@pytest.fixture(scope="session")
def run_dir():
    """Short, so the node sockets stay within the 107 characters a unix socket path may have."""
    path = Path(tempfile.mkdtemp(prefix="swarm-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def prefix_for():
    run_id = secrets.token_hex(2)
    return lambda name: f"t{run_id}-{name}"


@pytest.fixture(scope="module")
def swarm(swarm_engine, run_dir, prefix_for):
    """3 nodes (node 1 the manager), node 3 labelled database=true, SERVICE_IMAGE on every node, node
    ports 8080-8082 published on the host's loopback, a 1 s heartbeat so a lost node is seen fast."""
    prefix = prefix_for("swarm")
    sw = swarm_nodes.up(prefix, nodes=3, managers=1, labels={3: {"database": "true"}}, images=[SERVICE_IMAGE],
                        ports=[8080, 8081, 8082], run_dir=run_dir / prefix, heartbeat=1)
    t = sw.transfer
    print(f"\n[swarm] {prefix}: 3 nodes up in {sw.timings['total']:.1f}s ("
          + ", ".join(f"{k} {v:.1f}s" for k, v in sw.timings.items() if k != "total")
          + f"); {SERVICE_IMAGE} ({t.tar_bytes / 1e6:.0f} MB) into 3 nodes in {t.seconds:.1f}s; "
          f"load average {os.getloadavg()[0]:.1f}")
    yield sw
    swarm_nodes.down(prefix, run_dir=run_dir / prefix)


class StackInBackground:
    """`make stack-up STACK=swarm` in a thread of its own, so the stack's nodes, its images (the most of
    its 1.5 min) and its services come up while the node tests (test_swarm_nodes.py) run on their own
    swarm: both spend most of their time waiting. ``get()`` waits for it; ``remove()`` takes it down,
    nodes and all, whether or not a test used it."""

    def __init__(self):
        self.prefix = f"t{secrets.token_hex(2)}-sw"
        self.var_dir = Path(tempfile.mkdtemp(prefix="swarm-stack-"))
        self.run = self.error = None
        self.seconds = 0.0
        self._thread = threading.Thread(target=self._up, name="swarm-stack-up", daemon=True)
        self._thread.start()

    def _up(self) -> None:
        started = time.monotonic()
        try:
            self.run = emulator.up("swarm", prefix=self.prefix, ports="free", var_dir=self.var_dir, quiet=True,
                                   swarm_heartbeat=1)
        except Exception as exc:  # reported by get(), in the test that needs the stack
            self.error = exc
        self.seconds = time.monotonic() - started

    def get(self):
        waited = time.monotonic()
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self.run, time.monotonic() - waited

    def remove(self) -> None:
        """`make stack-down STACK=swarm`, which must leave nothing of the stack's swarm on this engine
        (an error of the last test's teardown otherwise); the nodes are removed in any case."""
        self._thread.join()
        problem = None
        try:
            emulator.down("swarm", var_dir=self.var_dir, unprotect=True, quiet=True)
            left = leftovers(self.prefix)
            problem = f"stack-down left {left}" if left else None
        except emulator.StackError as exc:
            problem = f"stack-down failed: {exc}"
        finally:
            swarm_nodes.down(self.prefix)
            shutil.rmtree(self.var_dir, ignore_errors=True)
        if problem and self.run is not None:
            raise AssertionError(problem)


@pytest.fixture(scope="session", autouse=True)
def swarm_stack_started(request):
    """The swarm stack, started at the suite's first test when any selected test needs it."""
    if not any("swarm_stack" in item.fixturenames for item in request.session.items):
        yield None
        return
    request.getfixturevalue("swarm_engine")  # the engine and images first; else the skip (or CI failure)
    background = StackInBackground()
    yield background
    background.remove()
