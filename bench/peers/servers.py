"""The servers `make bench-peers` compares: what each is, what it is sent, how it is started and stopped.

Every server serves the same model folder (``service/models/<model>/<version>``: model.onnx +
metadata.json) with the same ONNX Runtime session (apps/onnx_model.py), one worker pinned to the
same core. Each gets the same instance in its own protocol:

- ``v1``: the service's /api/v1 body, named features (``{"sepal_length": 1.0, ...}``); the baseline too;
- ``oip``: the Open Inference Protocol REST body, one [1, n] FP32 tensor (the service's /v2, MLServer);
- ``instances``: ``{"instances": [[...]]}`` (BentoML's and LitServe's own JSON, from our API code).
"""
from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..environment import Process, ServiceEnvironment, StartError, free_port, http
from ..scenarios import instance_body, predict_url, random_template as v1_template, v2_body, v2_url

APPS = Path(__file__).resolve().parent / "apps"
PEERS = ("mlserver", "bentoml", "litserve")


@dataclass(frozen=True)
class Server:
    """One row group of the table: a server (or one protocol of the service) and what it does."""

    key: str
    label: str
    protocol: str   # "v1", "oip" or "instances"
    does: str       # per request, besides parse → infer → answer (the baseline's whole job)


SERVERS = {s.key: s for s in [
    Server("baseline", "bare aiohttp + onnxruntime", "v1",
           "nothing else: parses the JSON (orjson), runs the session inline on the event loop, answers"),
    Server("service-v1", "this service, /api/v1", "v1",
           "API-key auth, checks each feature (type, range), request id, deadline, cache lookup (fixed body: "
           "a hit, no inference; a miss stores its answer), inference in a thread, Prometheus metrics, "
           "a log row to PostgreSQL"),
    Server("service-v2", "this service, /v2 (OIP)", "oip",
           "as /api/v1, on an Open Inference Protocol tensor (shape, datatype, data checked)"),
    Server("mlserver", "MLServer 1.7.1", "oip",
           "pydantic model of the OIP request and answer, codecs, request id, Prometheus metrics, an access-log "
           "line (debug on, the default); inference in the server process (parallel_workers=0)"),
    Server("bentoml", "BentoML 1.4.40", "instances",
           "pydantic validation of the typed API, inference in a thread pool, Prometheus metrics, "
           "OpenTelemetry trace ids, an access-log line"),
    Server("litserve", "LitServe 0.2.19", "instances",
           "FastAPI route, request id; the request goes to its inference process over a multiprocessing "
           "queue and back; an access-log line (uvicorn)"),
]}


# --- request bodies ---------------------------------------------------------------------------------

def _values(n: int) -> list[float]:
    return [1.0 + i * 0.5 for i in range(n)]  # the instance of bench.scenarios.instance_body


def fixed_body(protocol: str, features: list[str]) -> str:
    if protocol == "v1":
        return instance_body(features)
    if protocol == "oip":
        return v2_body(features)
    return json.dumps({"instances": [_values(len(features))]}, separators=(",", ":"))


def random_template(protocol: str, features: list[str]) -> str:
    """The body with ``@i@`` where bench/wrk/random.lua writes the i-th feature's random value."""
    marks = ",".join(f"@{i}@" for i in range(len(features)))
    if protocol == "v1":
        return v1_template(features)
    if protocol == "oip":
        return ('{"inputs":[{"name":"input","shape":[1,%d],"datatype":"FP32","data":[%s]}]}'
                % (len(features), marks))
    return '{"instances":[[%s]]}' % marks


def answer_of(protocol: str, doc: dict, labels: list[str]) -> tuple[str, list[float]]:
    """(label, probabilities in label order) from one server's answer to one instance."""
    if protocol == "oip":
        outs = {o["name"]: o["data"] for o in doc["outputs"]}
        return str(outs["label"][0]), [float(p) for p in outs["probabilities"][:len(labels)]]
    probs = doc["probabilities"][0]
    if isinstance(probs, dict):
        probs = [probs[name] for name in labels]
    return str(doc["predictions"][0]), [float(p) for p in probs]


# --- the processes ----------------------------------------------------------------------------------

def _proc_stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_tree(root: int) -> dict[int, list[str]]:
    """The stat fields of ``root`` and all its descendants, by PID."""
    stats = {int(d): s for d in os.listdir("/proc") if d.isdigit() and (s := _proc_stat(int(d))) is not None}
    children: dict[int, list[int]] = {}
    for pid, s in stats.items():
        children.setdefault(int(s[1]), []).append(pid)  # field 4: ppid
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            tree[pid] = stats[pid]
            todo += children.get(pid, [])
    return tree


def tree_cpu_probe(root: int):
    """A probe of the CPU seconds used so far by a server and every process it started.

    MLServer, BentoML and LitServe run their inference (or their HTTP side) in child processes,
    so one PID would undercount them; the service and the baseline are one process each.
    """
    ticks = os.sysconf("SC_CLK_TCK")

    def probe() -> dict[str, float]:
        tree = process_tree(root)
        return {"server_cpu_s": sum(int(s[11]) + int(s[12]) for s in tree.values()) / ticks}  # utime + stime

    return probe


@dataclass
class Running:
    """A started server: base URL, request URL, its process, and a probe of its CPU time."""

    server: Server
    base_url: str
    url: str
    process: Process
    processes: int = 0                      # processes in its tree once ready
    extra_probe: object = field(default=None, repr=False)

    def probe(self) -> dict[str, float]:
        out = tree_cpu_probe(self.process.proc.pid)()
        if self.extra_probe is not None:
            out.update(self.extra_probe())
        return out


def stop_tree(env: ServiceEnvironment, p: Process, timeout: float = 30.0) -> None:
    """SIGTERM the server and wait; then SIGKILL whatever it started and left behind."""
    leftovers = {pid: s[19] for pid, s in process_tree(p.proc.pid).items() if pid != p.proc.pid}  # starttime
    env.stop(p, timeout=timeout)
    deadline = time.monotonic() + 5
    while leftovers and time.monotonic() < deadline:
        leftovers = {pid: st for pid, st in leftovers.items() if (s := _proc_stat(pid)) and s[19] == st}
        time.sleep(0.2)
    for pid in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _peer_env(model_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREDICTION_", "VIRTUAL_ENV", "PYTHON"))}
    env.update(PYTHONPATH=str(APPS), PEERS_MODEL_DIR=str(model_dir), **extra)
    return env


def start_mlserver(env: ServiceEnvironment, venv_bin: Path, model_dir: Path, model: str, version: str,
                   workdir: Path) -> tuple[Process, str]:
    """MLServer with a model repository of one model (settings written here), defaults otherwise but one:
    ``parallel_workers=0`` runs inference in the server process. The default (1) adds a worker process
    that every request reaches through a pipe; on one core that only costs (about 2× the CPU per request
    here), so MLServer runs as one process on its core, like the service and the baseline."""
    repo = workdir / "mlserver-repository"
    (repo / model).mkdir(parents=True, exist_ok=True)
    port = free_port()
    (repo / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": port, "grpc_port": free_port(), "metrics_port": free_port(),
        "parallel_workers": 0}))
    (repo / model / "model-settings.json").write_text(json.dumps({
        "name": model, "implementation": "mlserver_runtime.OnnxRuntime",
        "parameters": {"uri": str(model_dir), "version": version}}))
    env.log(f"==> starting MLServer on 127.0.0.1:{port}")
    p = env.start_process("mlserver", [str(venv_bin / "mlserver"), "start", str(repo)], _peer_env(model_dir),
                          port, f"/v2/models/{model}/ready", ready_timeout=180)
    return p, f"{p.url}/v2/models/{model}/infer"


def start_bentoml(env: ServiceEnvironment, venv_bin: Path, model_dir: Path, workdir: Path) -> tuple[Process, str]:
    port = free_port()
    env.log(f"==> starting BentoML on 127.0.0.1:{port}")
    penv = _peer_env(model_dir, BENTOML_HOME=str(workdir / "bentoml-home"), BENTOML_DO_NOT_TRACK="True")
    p = env.start_process("bentoml", [str(venv_bin / "bentoml"), "serve", "bentoml_service:IrisOnnx",
                                      "--host", "127.0.0.1", "--port", str(port), "--working-dir", str(APPS)],
                          penv, port, "/readyz", ready_timeout=180)
    return p, f"{p.url}/predict"


def start_litserve(env: ServiceEnvironment, venv_bin: Path, model_dir: Path) -> tuple[Process, str]:
    port = free_port()
    env.log(f"==> starting LitServe on 127.0.0.1:{port}")
    p = env.start_process("litserve", [str(venv_bin / "python"), str(APPS / "litserve_app.py"), "--port", str(port)],
                          _peer_env(model_dir), port, "/health", ready_timeout=180)
    return p, f"{p.url}/predict"


def check_answer(run: Running, body: str, api_key: str, labels: list[str]) -> tuple[str, list[float]]:
    """One request before measuring: a 200 whose prediction we can read, or StartError."""
    status, resp = http("POST", run.url, body.encode(), {"Content-Type": "application/json", "X-API-Key": api_key},
                        timeout=30)
    if status != 200:
        raise StartError(f"{run.server.label}: POST {run.url} answered {status}: {resp[:400]!r} (body sent: {body}); "
                         f"log {run.process.logfile}")
    try:
        return answer_of(run.server.protocol, json.loads(resp), labels)
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise StartError(f"{run.server.label}: cannot read the prediction in {resp[:400]!r} ({exc!r})") from None


def service_urls(base: str, model: str, version: str) -> dict[str, str]:
    return {"service-v1": predict_url(base, model, version), "service-v2": v2_url(base, model, version)}
