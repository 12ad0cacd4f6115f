"""Listening sockets: the data layer on loopback only; each supervised process only where intended."""
import re

import pytest

from host_expectations import run_ok

# gRPC listens on IPv6 sockets that also take IPv4: its 127.0.0.1 shows as the IPv4-mapped ::ffff:127.0.0.1.
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def _listeners(host, with_lines: bool = False) -> list[tuple]:
    """(address, port, pids) of every listening TCP socket on the target (`ss -Hltnp`); with
    ``with_lines``, ss's own line as a fourth item (for messages)."""
    out = run_ok(host, "ss -Hltnp")
    result = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        addr, _, port = fields[3].rpartition(":")
        addr = addr.strip("[]").split("%")[0]
        pids = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        result.append((addr, int(port), pids, " ".join(fields)) if with_lines else (addr, int(port), pids))
    return result


@pytest.mark.parametrize("what, port_var", [
    ("PostgreSQL", "prediction_db_port"),
    ("Redis", "redis_tuning_port"),
])
def test_data_layer_listens_on_loopback_only(host, expected, what, port_var):
    port = int(expected[port_var])
    addrs = {a for a, p, _ in _listeners(host) if p == port}
    if "localenv_var_dir" in expected:
        assert addrs, f"{what} is not listening on port {port} ({port_var})"
    exposed = addrs - LOOPBACK
    assert not exposed, f"{what} port {port} listens on {sorted(exposed)}: it must be reachable on loopback only"


def test_supervised_processes_listen_only_where_intended(host, localenv):
    # port -> addresses allowed; the gateway is the one public entry point.
    allowed = {localenv["postgres_port"]: LOOPBACK, localenv["redis_port"]: LOOPBACK,
               localenv["prometheus_port"]: LOOPBACK, localenv["node_exporter_port"]: LOOPBACK,
               localenv["postgres_exporter_port"]: LOOPBACK, localenv["redis_exporter_port"]: LOOPBACK,
               localenv["https_port"]: None, localenv["http_port"]: None}
    allowed.update({p: LOOPBACK for p in localenv["service_ports"] + localenv["service_grpc_ports"]})
    owner = {localenv["postgres_port"]: "postgres", localenv["redis_port"]: "redis",
             localenv["prometheus_port"]: "prometheus", localenv["node_exporter_port"]: "node-exporter",
             localenv["https_port"]: "nginx", localenv["http_port"]: "nginx",
             **{p: f"service-{i + 1}" for i, p in enumerate(localenv["service_ports"])},
             **{p: f"service-{i + 1} (gRPC)" for i, p in enumerate(localenv["service_grpc_ports"])}}
    supervisord = int(run_ok(host, f"{localenv['supervisorctl']} pid").strip())
    tree = {}
    for line in run_ok(host, "ps -e -o pid=,ppid=").splitlines():
        pid, ppid = map(int, line.split())
        tree.setdefault(ppid, []).append(pid)
    ours, todo = set(), [supervisord]
    while todo:
        pid = todo.pop()
        ours.add(pid)
        todo.extend(tree.get(pid, []))
    listeners = _listeners(host)
    wrong = [f"{a}:{p}" for a, p, pids in listeners if pids & ours
             and (p not in allowed or (allowed[p] is not None and a not in allowed[p]))]
    assert not wrong, (f"supervised processes listen where the inventory does not say: {wrong} "
                       f"(allowed: {sorted(allowed)})")
    missing = [p for p in allowed if not any(lp == p and pids & ours for _, lp, pids in listeners)]
    if missing:
        # Which program should be there, what supervisord says of it, and what (if anything) listens there.
        status = run_ok(host, f"{localenv['supervisorctl']} status || true")
        there = _listeners(host, with_lines=True)
        log = host.file(f"{localenv['var_dir']}/supervisor/logs/supervisord.log")
        events = log.content_string.splitlines() if log.exists else []

        def about(program: str) -> str:
            state = next((line for line in status.splitlines() if line.startswith(program + " ")), "?")
            mentions = [e for e in events if f"'{program}'" in e or f" {program} " in e][-4:]
            return f"{program}: {state}; supervisord's last events for it: {mentions}"
        details = [f"{p} ({about(owner[p])}; listening there now: "
                   f"{[line for _, lp, _, line in there if lp == p] or 'nothing'})" for p in missing]
        pytest.fail(f"nothing supervised listens on ports {missing}:\n  " + "\n  ".join(details))
