"""stack_emulator/ports.py: the ports `ports="free"` stacks, swarm nodes and the tests' servers publish on."""
from stack_emulator.ports import ephemeral_port_range, free_port, free_ports, port_free


def test_picks_are_free_outside_the_ephemeral_range_and_never_handed_twice():
    # A stack picks every port before it creates a container, so nothing holds the earlier picks yet:
    # only the picker itself can keep two containers of one stack off the same port.
    picks = [free_port() for _ in range(300)] + free_ports(50)
    low, high = ephemeral_port_range()
    assert len(set(picks)) == len(picks)
    assert not [p for p in picks if low <= p <= high]
    assert all(port_free(p) for p in picks)


def test_adjacent_blocks_are_whole_and_do_not_overlap():
    firsts = free_ports(20, adjacent=3)
    ports = [p + i for p in firsts for i in range(3)]
    assert len(set(ports)) == 60
