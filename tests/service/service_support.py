"""Helpers of the service tests (constants, environment, the service as a process).

A module with its own name, not conftest.py: test folders each have a conftest, and
``from conftest import …`` would pick whichever was imported first.
"""
from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.net import free_port, wait_for_port
from prediction_service.state import STATE

ROOT = Path(__file__).resolve().parents[2]
SERVICE_DIR = ROOT / "service"
API_KEY = "test-api-key-0123456789abcdef"
JWT_SECRET = "test-jwt-secret-0123456789abcdef0123456789"
IRIS = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
AUTH = {"X-API-Key": API_KEY}


def load_training_module():
    path = SERVICE_DIR / "training" / "train_demo_models.py"
    spec = importlib.util.spec_from_file_location("train_demo_models", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def service_env(model_path: Path, redis_url: str, db_url: str, **overrides) -> dict[str, str]:
    """A complete PREDICTION_* environment; overrides use the short names (e.g. max_in_flight=2)."""
    env = {
        "PREDICTION_TIMESCALE_URL": db_url,
        "PREDICTION_REDIS_URL": redis_url,
        "PREDICTION_MODEL_PATH": str(model_path),
        "PREDICTION_API_KEY": API_KEY,
        "PREDICTION_JWT_SECRET": JWT_SECRET,
        "PREDICTION_INSTANCE": "test",
        "PREDICTION_DB_LOGGING": "false",
        "PREDICTION_LOG_LEVEL": "WARNING",
        # gRPC off unless a test asks for it (grpc_port=<free port>): the default port is one per host.
        "PREDICTION_GRPC_PORT": "0",
    }
    for key, value in overrides.items():
        env[f"PREDICTION_{key.upper()}"] = str(value)
    return env


class ServiceProcess:
    """``python -m prediction_service`` as a child process on a free port."""

    def __init__(self, env: dict[str, str], app_dir: Path = SERVICE_DIR):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("PREDICTION_")},
                    **env, "PREDICTION_HOST": "127.0.0.1", "PREDICTION_PORT": str(self.port),
                    "PYTHONPATH": str(app_dir)}
        # A file, not a pipe: a full pipe would block the service's logging.
        self.log = tempfile.NamedTemporaryFile(prefix="service-", suffix=".log", delete=False)
        self.proc = subprocess.Popen([sys.executable, "-m", "prediction_service"], env=self.env,
                                     cwd=app_dir, stdout=self.log, stderr=subprocess.STDOUT)
        try:
            wait_for_port(self.port, timeout=60)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"service did not start: {self.output()[-3000:]}") from None

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05):
    """Poll until predicate() is truthy; return its value or fail with the last one."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


async def wait_in_flight(app, n: int, timeout: float = 60.0) -> None:
    """Until the server has admitted (or released) the requests: a liveness bound, not a speed check."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while app[STATE].in_flight != n:
        if loop.time() > deadline:
            raise AssertionError(f"in_flight stayed {app[STATE].in_flight}, expected {n}")
        await asyncio.sleep(0.01)
