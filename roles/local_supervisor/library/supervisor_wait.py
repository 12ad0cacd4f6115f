#!/usr/bin/python
# -*- coding: utf-8 -*-
"""Ansible module: wait until supervised programs serve; fail at once when one of them exits."""
from __future__ import annotations

DOCUMENTATION = r"""
---
module: supervisor_wait
short_description: Wait until supervised programs listen (and answer), or fail fast with their last log lines
description:
  - Asks supervisord (XML-RPC on its unix socket) for each program's state and process, every half second.
  - A program is ready when its own process (the pid supervisord started, or that process's children) has a
    listening TCP socket on O(programs[].port) in /proc, and O(programs[].url), when given, answers 200. Another
    program answering on that port does not count.
  - A program that leaves STARTING/RUNNING (BACKOFF, EXITED, FATAL, STOPPED) or whose pid changes (it exited
    and supervisord started it again, which a slow start-up hides behind RUNNING) fails the task at once,
    with its exit status and the last lines of its log, instead of waiting for the timeout.
options:
  socket: {description: supervisord's control socket (unix_http_server file)., type: path, required: true}
  programs:
    description: Programs to wait for, each C({name, port, url}); C(url) is optional.
    type: list
    elements: dict
    required: true
  timeout: {description: Seconds to wait for all of them., type: int, default: 60}
  log_lines: {description: Lines of a failed program's log to show., type: int, default: 15}
attributes:
  check_mode: {support: none}
author: prediction-platform ops
"""

RETURN = r"""
pids: {description: program name -> pid of the process that serves, type: dict, returned: success}
waited: {description: seconds spent waiting, type: float, returned: always}
"""

import http.client
import os
import socket
import time
import urllib.request
import xmlrpc.client

from ansible.module_utils.basic import AnsibleModule

ALIVE = ("STARTING", "RUNNING")
TCP_LISTEN = "0A"


class UnixTransport(xmlrpc.client.Transport):
    """XML-RPC over supervisord's unix socket (what supervisorctl does with unix:// server URLs)."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def make_connection(self, host):
        conn = http.client.HTTPConnection("localhost", timeout=10)
        conn.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.sock.settimeout(10)
        conn.sock.connect(self.path)
        return conn


def _family(pid: int) -> set[int]:
    """The pid and its descendants (a program may serve from a child, e.g. a wrapper's)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
            children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        found.add(p)
        todo.extend(children.get(p, []))
    return found


def _socket_inodes(pids: set[int]) -> set[str] | None:
    """Inodes of the sockets the processes hold; None when /proc does not let us look."""
    inodes, readable = set(), False
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except FileNotFoundError:
            continue
        except PermissionError:
            return None
        readable = True
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes if readable else set()


def _listening_inodes(port: int) -> set[str]:
    """Inodes of the TCP sockets listening on ``port`` (any address) in this network namespace."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == TCP_LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                found.add(fields[9])
    return found


def _listens(pid: int, port: int) -> bool:
    own = _socket_inodes(_family(pid))
    if own is None:  # another user's process and we are not root: the port answering must do
        with socket.socket() as s:
            s.settimeout(1)
            return s.connect_ex(("127.0.0.1", port)) == 0
    return bool(own & _listening_inodes(port))


def _answers(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, never a proxy
    try:
        with opener.open(url, timeout=3) as r:
            return r.status == 200
    except Exception:  # noqa: BLE001 — refused, reset, 503…: not ready yet
        return False


def _log_tail(path: str, lines: int) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 65536))
            text = f.read().decode("utf-8", "replace")
    except OSError as exc:
        return [f"(cannot read {path}: {exc.strerror})"]
    return text.splitlines()[-lines:]


def main():
    module = AnsibleModule(
        argument_spec=dict(
            socket=dict(type="path", required=True),
            programs=dict(type="list", elements="dict", required=True),
            timeout=dict(type="int", default=60),
            log_lines=dict(type="int", default=15),
        ),
        supports_check_mode=False,
    )
    p = module.params
    rpc = xmlrpc.client.ServerProxy("http://localhost", transport=UnixTransport(p["socket"])).supervisor
    started = time.monotonic()
    first_pid: dict[str, int] = {}
    pending = {prog["name"]: prog for prog in p["programs"]}
    last: dict[str, dict] = {}

    def fail(name: str, why: str) -> None:
        info = last.get(name, {})
        log = info.get("stdout_logfile") or ""
        tail = _log_tail(log, p["log_lines"]) if log else []
        msg = f"{name} {why}"
        if tail:
            msg += f"; the last lines of its log ({log}):\n" + "\n".join("  " + line for line in tail)
        module.fail_json(msg=msg, waited=round(time.monotonic() - started, 1), state=info.get("statename"))

    while pending:
        for name, prog in sorted(pending.items()):
            try:
                info = last[name] = rpc.getProcessInfo(name)
            except xmlrpc.client.Fault as exc:
                module.fail_json(msg=f"supervisord does not know {name}: {exc.faultString}")
            except OSError as exc:
                module.fail_json(msg=f"supervisord does not answer on {p['socket']}: {exc}")
            state = info["statename"]
            if state not in ALIVE:
                # supervisord keeps no exit status for an exit within startsecs, only "Exited too quickly".
                why = (info.get("spawnerr") or "").replace(" (process log may have details)", "")
                if state == "EXITED":
                    why = f"exit status {info['exitstatus']}"
                fail(name, f"exited during start-up ({state}{': ' + why if why else ''})")
            pid = first_pid.setdefault(name, info["pid"])
            if info["pid"] != pid:
                # One wording for both ways of seeing the exit, so what the user reads does not depend on timing.
                fail(name, f"exited during start-up (started again by supervisord: pid {pid}, now {info['pid']})")
            port = prog.get("port")
            if (port is None or _listens(pid, int(port))) and (not prog.get("url") or _answers(prog["url"])):
                del pending[name]
        if not pending:
            break
        if time.monotonic() - started > p["timeout"]:
            name, prog = sorted(pending.items())[0]
            what = " and ".join(x for x in (f"listen on port {prog['port']}" if prog.get("port") else "",
                                            f"answer 200 at {prog['url']}" if prog.get("url") else "") if x)
            fail(name, f"did not {what} within {p['timeout']} s (state {last[name]['statename']})")
        time.sleep(0.5)
    module.exit_json(changed=False, pids=first_pid, waited=round(time.monotonic() - started, 1))


if __name__ == "__main__":
    main()
