"""A running stack as the Docker tests use it: HTTPS through its gateway, SQL and redis-cli inside its
containers, PromQL on its Prometheus, and a steady stream of predictions for the failure drills.

Not in conftest.py so test modules import it by a unique name (several conftest.py files exist).
"""
from __future__ import annotations

import io
import json
import shlex
import tarfile
import threading
import time
import uuid
from dataclasses import dataclass, field

import docker
import requests

from harness.waiting import wait_until

from stack_emulator import stack as emulator
from stack_emulator.engine import engine_client
from stack_emulator.stack import RunningStack, playbook

IRIS = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


@dataclass
class Load:
    """Predictions sent by a few threads until stopped; every result kept (status or exception)."""
    client: "StackClient"
    workers: int = 4
    results: list = field(default_factory=list)
    # The X-Request-ID of every answered request (each is sent with a fresh one, which the service
    # logs as the row's request_id): what missing_rows() looks for in the table.
    answered_ids: list = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list = field(default_factory=list)

    def __enter__(self) -> "Load":
        for w in range(self.workers):
            t = threading.Thread(target=self._run, args=(w,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _run(self, worker: int):
        session = self.client.session()
        i = 0
        while not self._stop.is_set():
            i += 1
            # Mostly distinct instances, so most requests are cache misses that reach the model and log a row.
            body = {**IRIS, "sepal_length": round(4.0 + (worker * 100_003 + i) % 4000 / 1000, 3)}
            try:
                rid = str(uuid.uuid4())
                r = session.post(f"{self.client.url}/api/v1/models/iris/predict", json=body, timeout=15,
                                 headers={"X-Request-ID": rid})
                if r.status_code == 200:
                    self.answered_ids.append(rid)
                # A failure keeps what it said (status, body and when), so a test's message shows it.
                self.results.append(200 if r.status_code == 200 else
                                    f"{time.strftime('%H:%M:%S')} {r.status_code} {r.text[:160]}")
            except Exception as exc:  # noqa: BLE001 — a transport error is a failed request too
                self.results.append(f"{time.strftime('%H:%M:%S')} {exc!r}")

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    @property
    def ok(self) -> int:
        return sum(1 for r in self.results if r == 200)

    @property
    def failed(self) -> list:
        return [r for r in self.results if r != 200]

    def wait_for(self, n: int, timeout: float = 30):
        start = len(self.results)
        wait_until(lambda: len(self.results) >= start + n, timeout, f"{n} more requests through the gateway")


def build_image(client, tag: str, dockerfile: str, files: dict[str, str] | None = None) -> str:
    """Build ``tag`` on ``client``'s engine from ``dockerfile`` (``files``: name -> content in the
    build context); returns its image id."""
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, text in {"Dockerfile": dockerfile, **(files or {})}.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    image, _ = client.images.build(fileobj=io.BytesIO(context.getvalue()), custom_context=True, tag=tag, rm=True)
    return image.id


def derived_image(stack: "StackClient", tag: str, lines: list[str], files: dict[str, str] | None = None) -> str:
    """Build ``prediction-service:<tag>`` FROM the image the stack's replicas run, plus Dockerfile
    ``lines`` (``files``: name -> content in the build context); returns its image id."""
    dockerfile = "\n".join([f"FROM {stack.service_image()}", *lines]) + "\n"
    return build_image(stack.docker, f"prediction-service:{tag}", dockerfile, files)


def settled_rows(stack: "StackClient") -> int:
    """The number of prediction rows once the writers have flushed what they hold (it stopped growing)."""
    last = [-1]

    def steady():
        n = int(stack.scalar("SELECT count(*) FROM predictions"))
        done, last[0] = n == last[0], n
        return done and (n,)
    time.sleep(1)
    return wait_until(steady, 60, "the prediction rows to stop growing", interval=1.5)[0]


def exec_lines(container, argv: list[str], user: str = "", environment: dict | None = None) -> list[str]:
    """The non-empty lines ``argv`` prints in ``container`` (run by sh); a non-zero exit fails with its
    output. A last line marks the end of the output and carries the exit status: on a loaded machine
    the engine (20.10) now and then hands back an exec's output empty though the command ran, which
    must not read as "printed nothing"; then it runs again."""
    end = "-- end of output, exit"
    for _ in range(3):
        out = container.exec_run(["sh", "-c", f"{shlex.join(argv)}; echo \"{end} $?\""], user=user,
                                 environment=environment).output.decode()
        lines = [line for line in out.splitlines() if line]
        if lines and lines[-1].startswith(end):
            assert lines[-1] == f"{end} 0", f"{container.name}: {argv} failed ({lines[-1]}): {lines[:-1]}"
            return lines[:-1]
    raise AssertionError(f"{container.name}: {argv}: the output came back without its end three times: {out!r}")


def missing_rows(stack: "StackClient", load: Load) -> list[str]:
    """The request ids of ``load``'s answered requests that have no row in the table (once the writers
    have flushed): rows lost for answers a client got. By id, so a request that a replica logged and
    the gateway then retried elsewhere (two rows) cannot hide one lost elsewhere."""
    settled_rows(stack)
    stored = {line[0] for line in stack.sql("SELECT DISTINCT request_id FROM predictions "
                                            "WHERE time > now() - interval '2 hours'")}
    return [rid for rid in load.answered_ids if rid not in stored]


class StackClient:
    def __init__(self, run: RunningStack):
        self._use(run)
        self.docker: docker.DockerClient = engine_client()

    def _use(self, run: RunningStack) -> None:
        self.run = run
        self.env = run.env
        self.url = run.env["GATEWAY_URL"]
        self.cacert = run.env["CA_CERT"]
        self.api_key = run.env["PREDICTION_API_KEY"]

    def service_image(self) -> str:
        """The image the replicas run."""
        return self.container("service-1").attrs["Config"]["Image"]

    def up(self, config: dict | None = None, replace: tuple[str, ...] = ()) -> RunningStack:
        """`make stack-up` again, as `pulumi config set --path …` (``config``, relative to the stack
        file; None keeps the last run's) then `pulumi up [--replace …]`; the run's plan and timings are
        on the result."""
        run = emulator.up(self.stack, var_dir=self.run.var_dir, config=config, replace=replace, quiet=True)
        self._use(run)
        return run

    @property
    def stack(self) -> str:
        return self.run.stack

    @property
    def prefix(self) -> str:
        return self.run.prefix

    def replica_targets(self) -> set[str]:
        """Each replica's address:port on the app network, as Prometheus's DNS discovery names it."""
        network = f"{self.prefix}-app"
        return {f"{self.docker.containers.get(n).attrs['NetworkSettings']['Networks'][network]['IPAddress']}:8000"
                for n in self.run.replicas()}

    def session(self, api_key: bool = True) -> requests.Session:
        s = requests.Session()
        s.trust_env = False  # the stack's own CA, straight to loopback
        s.verify = self.cacert
        if api_key:
            s.headers["X-API-Key"] = self.api_key
        return s

    def predict(self, body: dict | None = None, **kwargs) -> requests.Response:
        return self.session().post(f"{self.url}/api/v1/models/iris/predict", json=body or IRIS, timeout=15, **kwargs)

    def container(self, logical: str):
        return self.docker.containers.get(self.run.container(logical))

    def exec(self, logical: str, *argv: str, user: str | None = None) -> str:
        result = self.container(logical).exec_run(list(argv), user=user or "")
        assert result.exit_code == 0, f"{argv} in {logical} exited {result.exit_code}: {result.output.decode()}"
        return result.output.decode()

    def sql(self, query: str) -> list[list[str]]:
        """Rows of ``query`` run with psql inside the database container (its local socket)."""
        return [line.split("\t") for line in exec_lines(
            self.container("database-container"), ["psql", "-XAtq", "-F", "\t", "-v", "ON_ERROR_STOP=1",
                                                   "-U", "prediction_user", "-d", "prediction_db", "-c", query],
            user="postgres")]

    def scalar(self, query: str) -> str:
        rows = self.sql(query)
        assert len(rows) == 1 and len(rows[0]) == 1, f"{query!r} returned {rows}"
        return rows[0][0]

    def promql(self, expr: str) -> list:
        r = requests.get(f"{self.env['PROMETHEUS_URL']}/api/v1/query", params={"query": expr}, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", f"{expr!r}: {body}"
        return body["data"]["result"]

    def load(self, workers: int = 4) -> Load:
        return Load(self, workers)

    def playbook(self, name: str, *args: str, env: dict | None = None, timeout: float = 900) -> "Run":
        """ansible-playbook -i inventories/<stack> as an operator runs it after `make stack-up`:
        with the stack's env file exported (password, gateway, CA, prefix)."""
        proc = playbook(self.stack, name, *args, prefix=self.prefix, timeout=timeout,
                        env={**self.env, "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json", **(env or {})})
        return Run(proc.returncode, proc.stdout, proc.stderr)


@dataclass
class Run:
    """One ansible-playbook run, read from its JSON callback."""
    rc: int
    stdout: str
    stderr: str

    @property
    def doc(self) -> dict:
        try:
            return json.loads(self.stdout[self.stdout.index("{"):])
        except ValueError:
            return {}

    @property
    def changed(self) -> int:
        return sum(s.get("changed", 0) for s in self.doc.get("stats", {}).values())

    @property
    def failures(self) -> list[str]:
        msgs = []
        for play in self.doc.get("plays", []):
            for task in play.get("tasks", []):
                for res in task.get("hosts", {}).values():
                    if res.get("failed") or res.get("unreachable"):
                        msgs.append(f"{task['task']['name']}: {res.get('msg', res)}")
        return msgs

    def messages(self) -> list[str]:
        """Every task result's msg, in order (what an operator reads)."""
        return [str(res.get("msg")) for play in self.doc.get("plays", []) for task in play.get("tasks", [])
                for res in task.get("hosts", {}).values() if res.get("msg")]

    def ok(self) -> "Run":
        assert self.rc == 0, f"playbook failed ({self.rc}): {self.failures or self.stderr[-3000:] or self.stdout[-3000:]}"
        return self
