"""The Docker engine the emulator drives: DOCKER_HOST, else the local socket."""
from __future__ import annotations

import os

import docker


class EngineMissing(Exception):
    """No engine answers; the message says where it looked and how to start one."""


def engine_client(timeout: int = 300) -> docker.DockerClient:
    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
        return client
    except Exception as exc:  # noqa: BLE001 — any failure to reach the engine reads the same to a user
        raise EngineMissing(f"no Docker engine answers at {where} ({type(exc).__name__}); start one "
                            f"(as root: scripts/docker-engine.sh start) or set DOCKER_HOST") from None
