"""What the Swarm tests share (not in conftest.py, so test modules import it by a unique name)."""
from __future__ import annotations

import requests
from docker.types import EndpointSpec, RestartPolicy, ServiceMode

from stack_emulator import swarm_nodes
from stack_emulator.engine import engine_client
from stack_emulator.images import BASE_TAG

# The image of the tests' own services: the local Debian base every stand-in is built on (74 MB; half of
# python:3.11-slim, and moving images into the nodes is most of this suite's start), served by perl-base.
SERVICE_IMAGE = BASE_TAG
# GET anything -> the task's hostname (its node's name); exits on SIGTERM.
_HTTP_ID = r"""
$SIG{TERM} = sub { exit 0 };
open(my $f, "<", "/etc/hostname") or die "hostname: $!"; my $id = <$f>;
my $s = IO::Socket::INET->new(LocalPort => 8000, Listen => 64, ReuseAddr => 1) or die "listen: $!";
while (my $c = $s->accept) {
    while (my $line = <$c>) { last if $line =~ /^\r?$/ }
    print $c "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " . length($id) . "\r\n\r\n$id";
    close $c;
}
"""
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
        command=["perl", "-MIO::Socket::INET", "-e", _HTTP_ID],
        mode=ServiceMode("replicated", replicas=replicas),
        endpoint_spec=EndpointSpec(mode="dnsrr", ports={port: (8000, "tcp", "host")}),
        # stop a task that ignores SIGTERM after 1 s; restart a lost task after 1 s (Docker's 5 s)
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
