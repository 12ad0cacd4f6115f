"""Free loopback ports for what the emulator publishes with ``ports="free"`` (the tests' stacks and
swarm nodes) and for the tests' own servers: outside the kernel's ephemeral range, so a port chosen
now is not handed to another process by the kernel before its server binds it."""
import random
import socket
import threading
from pathlib import Path


# Lowest port picked: above the well-known and registered-service ports people use for
# their own servers (and make up's defaults: 8001…, 8101…, 8443, 8080, 15432, 16379, 19090, 19100).
LOWEST_PORT = 20000


def ephemeral_port_range() -> tuple[int, int]:
    """The kernel's range for ports it hands out by itself: bind() to port 0 (odd ports first) and the
    source port of every outgoing connection (even ports first) — net.ipv4.ip_local_port_range."""
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return int(low), int(high)


def port_free(port: int) -> bool:
    """Nothing holds ``port`` on 127.0.0.1 (not even a connection's source port): a bind succeeds."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


# Every port handed out by this process: picks are random and a caller binds its port later (a stack
# picks all its ports, then creates the containers), so "free now" alone would let two picks collide.
_handed: set[int] = set()
_lock = threading.Lock()


def free_ports(n: int, adjacent: int = 1) -> list[int]:
    """n distinct free loopback ports, each the first of ``adjacent`` free consecutive ports, from
    outside the kernel's ephemeral range (below it; above it only when there is no room below), and
    none handed out by this process before.

    A port picked with bind(("127.0.0.1", 0)) comes from the ephemeral range, and is free again as soon
    as the picking socket closes: until the test's server binds it, and whenever a test stops and starts
    that server, the kernel may hand the same port to any other process in the network namespace —
    another bind(0), or the source port of an outgoing connection, which keeps a listener from binding it
    (EADDRINUSE, SO_REUSEADDR or not). Outside that range the kernel hands out no port by itself.
    """
    low, high = ephemeral_port_range()
    candidates = list(range(LOWEST_PORT, low - adjacent + 1))
    if len(candidates) < 1000:  # a range tuned to start low: what is left above it
        candidates += range(high + 1, 65536 - adjacent + 1)
    if len(candidates) < 1000:
        raise RuntimeError(f"net.ipv4.ip_local_port_range is {low}-{high}: no room outside it for test ports")
    with _lock:
        chosen: list[int] = []
        for port in random.sample(candidates, len(candidates)):
            block = range(port, port + adjacent)
            if all(p not in chosen and p not in _handed and port_free(p) for p in block):
                chosen.extend(block)
                if len(chosen) == n * adjacent:
                    _handed.update(chosen)
                    return chosen[::adjacent]
    raise RuntimeError(f"fewer than {n} free ports outside the ephemeral range {low}-{high}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing holds right now, outside the kernel's ephemeral range."""
    return free_ports(1)[0]
