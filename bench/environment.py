"""Servers the service-mode benchmark needs: throwaway PostgreSQL + Redis, service processes, baseline.

PostgreSQL and Redis come from the test harness (``tests/harness``: real servers in temp dirs on
free ports), so the benchmark and the tests start them the same way. Every process started here is
stopped by its PID when the environment closes, also on errors and Ctrl-C.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVICE_DIR = ROOT / "service"
DEFAULT_MODELS = SERVICE_DIR / "models"

sys.path.insert(0, str(ROOT / "tests"))
from harness.net import free_port  # noqa: E402
from harness.postgres import PostgresServer, start_postgres, timescaledb_missing  # noqa: E402,F401
from harness.redis import RedisServer, start_redis  # noqa: E402


class StartError(RuntimeError):
    """A server needed by the benchmark did not start; the message says which and where its log is."""


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None,
         timeout: float = 5.0, insecure_tls: bool = False) -> tuple[int, bytes]:
    """A tiny HTTP client (stdlib only): status and body, also for 4xx/5xx."""
    ctx = None
    if insecure_tls and url.startswith("https"):
        import ssl
        ctx = ssl._create_unverified_context()  # the local gateway's certificate is self-signed
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


_SAMPLE = re.compile(r'^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Samples of a Prometheus text exposition: (name, labels, value)."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m:
            try:
                out.append((m.group(1), dict(_LABEL.findall(m.group(2) or "")), float(m.group(3))))
            except ValueError:
                continue
    return out


def cpu_probe(pid: int):
    """A probe reading the CPU seconds (user + system) one process has used so far.

    CPU per request is far steadier than req/s on a shared machine: time spent waiting for a CPU
    does not count. It covers only that process (not PostgreSQL, Redis or wrk).
    """
    ticks = os.sysconf("SC_CLK_TCK")

    def probe() -> dict[str, float]:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return {}
        return {"server_cpu_s": (int(fields[11]) + int(fields[12])) / ticks}  # utime, stime

    return probe


def combine(*probes):
    """One probe returning the union of several probes' readings."""
    def probe() -> dict[str, float]:
        out: dict[str, float] = {}
        for p in probes:
            out.update(p())
        return out
    return probe


def metrics_probe(base_url: str, model: str):
    """A probe for runner.Target: counters of the service that tell what a run really exercised."""
    prefix = "prediction_service_"

    def probe() -> dict[str, float]:
        status, body = http("GET", base_url + "/metrics", timeout=5)
        if status != 200:
            return {}
        acc: dict[str, float] = {}

        def add(k: str, v: float) -> None:
            acc[k] = acc.get(k, 0.0) + v

        for name, labels, value in parse_metrics(body.decode()):
            if not name.startswith(prefix):
                continue
            short = name[len(prefix):]
            if short == "cache_hits_total" and labels.get("model") == model:
                add(f"cache_hits_{labels.get('tier', 'any')}", value)
            elif short == "cache_misses_total" and labels.get("model") == model:
                add("cache_misses", value)
            elif short == "cache_errors_total":
                add("cache_errors", value)
            elif short in ("db_rows_written_total", "db_rows_dropped_total", "db_write_errors_total"):
                add(short[:-len("_total")], value)
            elif short == "requests_rejected_total":
                add("rejected", value)
            elif short == "requests_total" and labels.get("endpoint", "").endswith(("/predict", "/infer")):
                add("responses_2xx" if labels.get("status", "").startswith("2") else "responses_not_2xx", value)
        return acc

    return probe


@dataclass
class Process:
    name: str
    url: str
    proc: subprocess.Popen
    logfile: Path

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class ServiceEnvironment:
    """PostgreSQL + Redis + the processes under test. Use as a context manager."""

    logdir: Path
    service_cpus: str | None = None      # taskset list for the service and baseline, e.g. "1"
    model_path: Path = DEFAULT_MODELS
    log: object = print
    timescaledb: bool = False            # preload TimescaleDB: the migrations build hypertables
    api_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    jwt_secret: str = field(default_factory=lambda: secrets.token_urlsafe(48))
    postgres: PostgresServer | None = None
    redis: RedisServer | None = None
    processes: list[Process] = field(default_factory=list)

    def __enter__(self) -> "ServiceEnvironment":
        self.logdir.mkdir(parents=True, exist_ok=True)
        try:
            self.log("==> starting throwaway PostgreSQL 15" + (" with TimescaleDB" if self.timescaledb else "")
                     + " and Redis")
            self.postgres = start_postgres(timescaledb=self.timescaledb)
            self.redis = start_redis()
            self._migrate()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _service_env(self, port: int, extra: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREDICTION_")}
        env.update({
            "PYTHONPATH": str(SERVICE_DIR),
            "PREDICTION_TIMESCALE_URL": self.postgres.dsn(),
            "PREDICTION_REDIS_URL": self.redis.url,
            "PREDICTION_MODEL_PATH": str(self.model_path),
            "PREDICTION_API_KEY": self.api_key,
            "PREDICTION_JWT_SECRET": self.jwt_secret,
            "PREDICTION_HOST": "127.0.0.1",
            "PREDICTION_PORT": str(port),
            # Its gRPC listener too, as deployed, on a port of its own (the default is one per host).
            "PREDICTION_GRPC_PORT": str(free_port()),
            "PREDICTION_LOG_LEVEL": "WARNING",
        })
        env.update(extra)
        return env

    def _migrate(self) -> None:
        self.log("==> applying migrations (python -m prediction_service migrate)")
        env = self._service_env(0, {})
        proc = subprocess.run([sys.executable, "-m", "prediction_service", "migrate"], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise StartError(f"migrations failed (exit {proc.returncode}): "
                                    f"{(proc.stderr or proc.stdout).strip()[-1500:]}")

    def _spawn(self, name: str, argv: list[str], env: dict[str, str], port: int, ready_path: str,
               ready_timeout: float = 90.0) -> Process:
        logfile = self.logdir / f"{name}.log"
        if self.service_cpus is not None:
            argv = ["taskset", "-c", self.service_cpus, *argv]  # taskset execs: the PID is the server's
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=open(logfile, "wb"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        p = Process(name, f"http://127.0.0.1:{port}", proc, logfile)
        self.processes.append(p)
        self._wait_ready(p, ready_path, ready_timeout)
        return p

    def _wait_ready(self, p: Process, path: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if p.proc.poll() is not None:
                raise StartError(f"{p.name} exited with {p.proc.returncode} while starting; "
                                        f"log {p.logfile}:\n{p.log_tail()}")
            try:
                status, body = http("GET", p.url + path, timeout=2)
                if status == 200:
                    return
                last = f"{status} {body[:300]!r}"
            except OSError as exc:
                last = str(exc)
            time.sleep(0.2)
        raise StartError(f"{p.name} not ready on {p.url}{path} after {timeout:g}s (last: {last}); "
                                f"log {p.logfile}:\n{p.log_tail()}")

    def start_service(self, name: str, profile_to: Path | None = None, **settings: str) -> Process:
        """One ``python -m prediction_service`` with extra PREDICTION_* settings; waits for /ready.

        ``profile_to``: run it under pyinstrument, which saves a session there when the process
        stops (SIGTERM makes aiohttp shut down cleanly, so the profile is written).
        """
        port = free_port()
        self.log(f"==> starting service '{name}' on 127.0.0.1:{port}"
                 + (f" ({', '.join(f'{k}={v}' for k, v in settings.items())})" if settings else "")
                 + (" under pyinstrument" if profile_to else ""))
        argv = [sys.executable, "-m", "prediction_service"]
        if profile_to is not None:
            argv = [sys.executable, "-m", "pyinstrument", "-r", "pyisession", "-o", str(profile_to),
                    "-m", "prediction_service"]
        return self._spawn(name, argv, self._service_env(port, settings), port, "/ready")

    def stop(self, p: Process, timeout: float = 60.0) -> int:
        """Stop one process (SIGTERM, then SIGKILL after ``timeout``); returns its exit status."""
        if p.proc.poll() is None:
            p.proc.send_signal(signal.SIGTERM)
            try:
                p.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.proc.kill()
                p.proc.wait()
        if p in self.processes:
            self.processes.remove(p)
        return p.proc.returncode

    def start_baseline(self, model_dir: Path | None = None) -> Process:
        """The bare-aiohttp baseline; with ``model_dir`` it also runs that model per request."""
        port = free_port()
        self.log(f"==> starting baseline (bare aiohttp{' + onnxruntime' if model_dir else ''}) on 127.0.0.1:{port}")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        argv = [sys.executable, "-m", "bench.baseline_app", "--port", str(port)]
        return self._spawn("baseline", argv + (["--model-dir", str(model_dir)] if model_dir else []),
                           env, port, "/health")

    def start_process(self, name: str, argv: list[str], env: dict[str, str], port: int, ready_path: str,
                      ready_timeout: float = 90.0) -> Process:
        """Any other server (bench/peers): started pinned like the service, stopped with the rest;
        waits until GET ``ready_path`` answers 200."""
        return self._spawn(name, argv, env, port, ready_path, ready_timeout)

    def db_rows(self) -> int | None:
        """Rows in ``predictions`` (to show the logging scenario really logged)."""
        try:
            return self.postgres.execute("SELECT count(*) FROM predictions")[0][0]
        except Exception:  # noqa: BLE001 — informational only
            return None

    def close(self) -> None:
        for p in reversed(self.processes):
            if p.proc.poll() is None:
                p.proc.send_signal(signal.SIGTERM)
        for p in reversed(self.processes):
            try:
                p.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.proc.kill()
                p.proc.wait()
        self.processes.clear()
        if self.redis is not None:
            self.redis.destroy()
            self.redis = None
        if self.postgres is not None:
            self.postgres.destroy()
            self.postgres = None


def describe_models(base_url: str, api_key: str, insecure_tls: bool = False) -> dict:
    """GET /api/v1/models as JSON (raises with the status and body when it is not 200)."""
    status, body = http("GET", base_url.rstrip("/") + "/api/v1/models", headers={"X-API-Key": api_key},
                        insecure_tls=insecure_tls)
    if status != 200:
        raise StartError(f"GET {base_url}/api/v1/models answered {status}: {body[:300]!r}")
    return json.loads(body)


def version_info(doc, model: str, version: str | None) -> dict:
    """The GET /api/v1/models entry of ``model`` ``version`` (or the default one), plus its name
    under ``version`` and, under ``shared_versions``, the model's other versions with cache tier
    "shared"."""
    entries = doc.get("models", doc) if isinstance(doc, dict) else doc
    for entry in entries:
        if entry.get("name") != model:
            continue
        want = str(version or entry.get("default_version"))
        for v in entry.get("versions", []):
            if str(v.get("version")) == want:
                shared = [str(o["version"]) for o in entry["versions"]
                          if o.get("cache_tier") == "shared" and str(o.get("version")) != want]
                return {**v, "version": want, "shared_versions": shared}
        raise StartError(f"model {model} has no version {want} "
                         f"(has {[v.get('version') for v in entry.get('versions', [])]})")
    raise StartError(f"model {model!r} is not served (models: {[e.get('name') for e in entries]})")


def model_features(doc, model: str, version: str | None) -> list[str]:
    """Feature names of ``model`` (``version`` or the default) from a GET /api/v1/models document."""
    entries = doc.get("models", doc) if isinstance(doc, dict) else doc
    for entry in entries:
        if entry.get("name") != model:
            continue
        want = version or entry.get("default_version")
        for v in entry.get("versions", []):
            if str(v.get("version")) == str(want):
                return [f["name"] for f in v["features"]]
        raise StartError(f"model {model} has no version {want} "
                                f"(has {[v.get('version') for v in entry.get('versions', [])]})")
    raise StartError(f"model {model!r} is not served (models: {[e.get('name') for e in entries]})")
