"""The ports the test environments and servers run on: free, distinct, and out of the kernel's own hands.

A port from the kernel's ephemeral range (what bind() to port 0 returns) is handed out again by the
kernel, to any process, as soon as nothing holds it: between the tests choosing it and make up's program
binding it, and whenever a test stops and starts a program. The program then cannot bind it while
another process answers there (on a shared machine, another test run's server): one way to the testinfra
suite's "nothing supervised listens on ports [...]" (issue 21).
"""
import socket

from harness.net import LOWEST_PORT, ephemeral_port_range, free_port, free_ports


def test_ports_are_free_distinct_and_below_the_ephemeral_range():
    low, _ = ephemeral_port_range()
    firsts = free_ports(7, adjacent=2)
    ports = [p + i for p in firsts for i in range(2)]
    assert len(set(ports)) == len(ports), firsts
    assert all(LOWEST_PORT <= p < low for p in ports), (firsts, low)
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # free: binds without SO_REUSEADDR


def test_every_suite_picks_from_there():
    """free_port (the test servers of tests/service, tests/ops, tests/infra) is the same choice."""
    low, _ = ephemeral_port_range()
    assert all(LOWEST_PORT <= free_port() < low for _ in range(20))


def test_no_port_the_kernel_hands_out_is_one_of_them():
    """What the kernel gives other processes (here: 500 binds to port 0) never meets the chosen ports."""
    chosen = set(free_ports(8))
    socks = []
    try:
        for _ in range(500):
            s = socket.socket()
            socks.append(s)
            s.bind(("127.0.0.1", 0))
            assert s.getsockname()[1] not in chosen
    finally:
        for s in socks:
            s.close()
