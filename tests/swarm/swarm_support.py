"""What the Swarm tests share (not in conftest.py, so test modules import it by a unique name)."""
from __future__ import annotations

import requests
from docker.types import EndpointSpec, RestartPolicy, ServiceMode

from stack_emulator import swarm_nodes
from stack_emulator.engine import engine_client

# The image of the tests' own services: the smallest local image with an HTTP server (python3 -m http.server).
SERVICE_IMAGE = "python:3.11-slim"
SECOND = 1_000_000_000  # Swarm durations are nanoseconds


def answer(url: str) -> str | None:
    """The node name the task behind ``url`` reports, or None when nothing answers there."""
    try:
        r = requests.get(f"{url}/id", timeout=2)
        return r.text.strip() if r.status_code == 200 else None
    except requests.RequestException:
        return None


def http_service(swarm, name: str, port: int, replicas: int, **placement):
    """A replicated HTTP service whose tasks answer GET /id with the name of their node, endpoint mode
    dnsrr and ``port`` published in host mode on the nodes that run a task (no IPVS here)."""
    return swarm.client().services.create(
        SERVICE_IMAGE, name=name, hostname="{{.Node.Hostname}}",
        command=["sh", "-c", "hostname > /tmp/id && cd /tmp && exec python3 -m http.server 8000"],
        mode=ServiceMode("replicated", replicas=replicas),
        endpoint_spec=EndpointSpec(mode="dnsrr", ports={port: (8000, "tcp", "host")}),
        # python as PID 1 ignores SIGTERM: stop it after 1 s; restart a lost task after 1 s (Docker's 5 s)
        stop_grace_period=SECOND, restart_policy=RestartPolicy(condition="any", delay=SECOND),
        **placement)


def running_on(swarm, service) -> list[int]:
    """Indexes of the nodes where the service's tasks are running."""
    ids = {v["id"]: i for i, v in swarm.states().items()}
    return sorted(ids[t["NodeID"]] for t in service.tasks(filters={"desired-state": "running"})
                  if t["Status"]["State"] == "running" and t.get("NodeID") in ids)


def leftovers(prefix: str) -> list[str]:
    """Everything on the host engine that belongs to swarm ``prefix`` by label or by name."""
    host = engine_client()
    out = [f"container {c.name}" for c in host.containers.list(all=True)
           if c.name.startswith(f"{prefix}-") or c.labels.get(swarm_nodes.SWARM) == prefix]
    out += [f"network {n.name}" for n in host.networks.list() if n.name.startswith(f"{prefix}-")]
    out += [f"volume {v.name}" for v in host.volumes.list() if v.name.startswith(f"{prefix}-")]
    return out
