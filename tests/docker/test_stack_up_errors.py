"""Bad input to `make stack-up` gets one line naming the cause and the fix, and leaves nothing behind:
a second run after the fix starts from a clean engine."""
import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dockerstack import images as images_module
from dockerstack import stack as harness

HERE = Path(__file__).resolve().parent


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dockerstack", *args], cwd=HERE, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


def leftovers(client, prefix: str) -> list[str]:
    names = [c.name for c in client.containers.list(all=True)] + [n.name for n in client.networks.list()] \
        + [v.name for v in client.volumes.list()]
    return sorted(n for n in names if n.startswith(prefix + "-"))


def test_unknown_stack_is_one_line():
    proc = cli("up", "qa")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "stack-up: unknown stack 'qa': the stacks are dev, staging, prod (Pulumi.<stack>.yaml)"]


def test_no_docker_engine_is_one_line():
    proc = cli("up", "dev", env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no Docker engine answers at unix:///nonexistent/docker.sock" in lines[0]
    assert "DOCKER_HOST" in lines[0]


def test_a_stack_file_the_program_rejects_is_one_line(docker_engine, tmp_path):
    with pytest.raises(harness.StackError) as err:
        harness.up("dev", prefix=f"t{secrets.token_hex(2)}-bad", ports="free", var_dir=tmp_path,
                   config={"service": {"replicas": 0}})
    message = str(err.value)
    assert "\n" not in message
    assert "rejects Pulumi.dev.yaml" in message and "service.replicas must be between 1 and 20" in message


def test_a_taken_host_port_stops_the_run_and_leaves_nothing(docker_engine, tmp_path):
    prefix = f"t{secrets.token_hex(2)}-port"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(harness.StackError) as err:
            # dev with every port the stack file names, except the gateway's, moved out of the way.
            harness.up("dev", prefix=prefix, ports="exact", var_dir=tmp_path, config={
                "database": {"tag": "2.17.2-pg15", "hostPort": free(), "hostBindAddress": "127.0.0.1"},
                "cache": {"tag": "7.4.1", "hostPort": free(), "maxmemory": "128mb"},
                "gateway": {"tag": "1.27.3", "httpsPort": port, "httpPort": free(), "bindAddress": "127.0.0.1"},
                "monitoring": {"prometheusTag": "v2.55.1", "grafanaTag": "11.3.1", "prometheusHostPort": free(),
                               "grafanaHostPort": free()}})
    message = str(err.value)
    assert f"127.0.0.1:{port}" in message and "already taken" in message and "STACK_PORTS=free" in message
    # The database, cache and replica were up when the gateway failed: all removed again.
    assert leftovers(docker_engine, prefix) == []


def test_a_failing_image_build_names_the_image_and_leaves_nothing(docker_engine, tmp_path, monkeypatch):
    broken = tmp_path / "broken-redis"
    broken.mkdir()
    (broken / "Dockerfile").write_text("ARG BASE\nFROM ${BASE}\nRUN echo 'no redis here' && exit 3\n")
    monkeypatch.setitem(images_module.RECIPES, "redis", images_module.Recipe(str(broken), ("0.0.0-broken",)))
    prefix = f"t{secrets.token_hex(2)}-img"
    with pytest.raises(harness.StackError) as err:
        harness.up("dev", prefix=prefix, ports="free", var_dir=tmp_path / "var",
                   config={"cache": {"tag": "0.0.0-broken", "hostPort": 6379, "maxmemory": "128mb"}})
    message = str(err.value)
    assert message.startswith("stack dev not started: building redis:0.0.0-broken failed")
    assert "no redis here" in message
    assert leftovers(docker_engine, prefix) == []
    try:
        docker_engine.images.remove("redis:0.0.0-broken")
    except Exception:  # noqa: BLE001 — the failed build left no such tag, which is the point
        pass


def free() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
