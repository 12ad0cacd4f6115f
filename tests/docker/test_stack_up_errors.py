"""Bad input to `make stack-up` gets one line naming the cause and the fix. What needs no engine (the
stack name, the stack file through the program) is checked before the engine is looked for; what
can be checked before anything changes (inputs, host ports, images) is checked first, so such a
failure leaves nothing behind."""
import os
import secrets
import socket
import subprocess
import sys

import pytest

from harness.net import free_port
from stack_emulator import stack as emulator
from stack_emulator.program import stacks
from stack_emulator.stack import ROOT


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stack_emulator", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


def leftovers(client, prefix: str) -> list[str]:
    names = [c.name for c in client.containers.list(all=True)] + [n.name for n in client.networks.list()] \
        + [v.name for v in client.volumes.list()]
    return sorted(n for n in names if n.startswith(prefix + "-"))


NO_ENGINE = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}


def test_unknown_stack_is_one_line_with_or_without_an_engine():
    for env in (None, NO_ENGINE):
        proc = cli("up", "qa", env=env)
        assert proc.returncode == 1
        assert proc.stderr.strip().splitlines() == [
            f"stack-up: unknown stack 'qa': the stacks are {', '.join(stacks())} (Pulumi.<stack>.yaml)"]
    assert stacks()[:3] == ("dev", "staging", "prod")


def test_a_stack_file_the_program_rejects_is_one_line_before_the_engine(tmp_path):
    # No engine needed: the program itself is what rejects the file.
    with pytest.raises(emulator.StackError) as err:
        emulator.check("dev", var_dir=tmp_path, config={"service": {"replicas": 0}})
    message = str(err.value)
    assert "\n" not in message
    assert "rejects Pulumi.dev.yaml" in message and "service.replicas must be between 1 and 20" in message


def test_no_docker_engine_is_one_line():
    proc = cli("up", "dev", env=NO_ENGINE)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no Docker engine answers at unix:///nonexistent/docker.sock" in lines[0]
    assert "DOCKER_HOST" in lines[0]


def test_preview_needs_no_engine_and_lists_every_resource(tmp_path):
    plan = emulator.preview("prod", var_dir=tmp_path)
    assert {s.op for s in plan.steps} == {"create"} and not plan.deletes
    assert "docker:Container" in plan.render() and "Resources: " in plan.render()


def test_a_taken_host_port_stops_the_run_before_anything_changes(docker_engine, tmp_path):
    prefix = f"t{secrets.token_hex(2)}-port"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(emulator.StackError) as err:
            # dev with every port the stack file names, except the gateway's, moved out of the way.
            emulator.up("dev", prefix=prefix, ports="exact", var_dir=tmp_path, quiet=True, config={
                "database": {"hostPort": free(), "hostBindAddress": "127.0.0.1"},
                "cache": {"hostPort": free()},
                "gateway": {"httpsPort": port, "httpPort": free(), "bindAddress": "127.0.0.1"},
                "monitoring": {"prometheusHostPort": free(), "grafanaHostPort": free()}})
    message = str(err.value)
    assert f"127.0.0.1:{port}" in message and "already taken" in message and "STACK_PORTS=free" in message
    assert "\n" not in message
    assert leftovers(docker_engine, prefix) == []


def test_an_image_that_cannot_be_had_names_it_and_leaves_nothing(docker_engine, tmp_path):
    prefix = f"t{secrets.token_hex(2)}-img"
    with pytest.raises(emulator.StackError) as err:
        emulator.up("dev", prefix=prefix, ports="free", var_dir=tmp_path, quiet=True,
                    config={"service": {"image": "prediction-service:0.0.0-nowhere"}})
    message = str(err.value)
    assert message.startswith("stack dev not started: prediction-service:0.0.0-nowhere is not on the Docker engine")
    assert "docker pull" in message
    assert leftovers(docker_engine, prefix) == []


def free() -> int:
    return free_port()
