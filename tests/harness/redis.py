"""A throwaway Redis server on a free port, no persistence."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import redis

from .net import free_port, wait_for_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


@dataclass
class RedisServer:
    port: int = field(default_factory=free_port)
    basedir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="redistest-")))
    proc: subprocess.Popen | None = None
    host = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> "RedisServer":
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", self.host, "--save", "", "--appendonly", "no",
             "--dir", str(self.basedir), "--daemonize", "no", "--protected-mode", "yes"],
            stdout=open(self.basedir / "redis.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        """Kill the server outright (simulates a Redis outage); ``start()`` brings it back, empty."""
        if self.proc is None:
            return
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.basedir, ignore_errors=True)


def start_redis() -> RedisServer:
    return RedisServer().start()
