"""roles/local_supervisor waits for a program as `make up` needs it: until the program's own process
listens on its port. A program that exits instead stops the play at once, saying so with its last log
lines; another process on the port does not count as the program listening.

Real supervisord (the venv's), real ansible-playbook (one run for all cases: each program in a block
whose rescue records what the play would have stopped with), throwaway programs.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.net import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SQUAT_TIMEOUT = 5


def _python(code: str) -> str:
    return f"{sys.executable} -c {json.dumps(code)}"


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Program name -> "ok", or the message of the task that failed on it."""
    tmp = tmp_path_factory.mktemp("supervised")
    folder = tmp / "supervisor"
    ports = {name: free_port() for name in ("web", "broken", "slowcrash")}
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    programs = {
        # Slow to listen, as a loaded machine makes every program: the wait is for the port, not a time.
        "web": (_python(f"import http.server, time; time.sleep(3); "
                        f"http.server.HTTPServer(('127.0.0.1', {ports['web']}), None).serve_forever()"), ports["web"]),
        "broken": (_python("import sys; print('cannot start: PREDICTION_EXAMPLE is wrong', file=sys.stderr); "
                           "sys.exit(3)"), ports["broken"]),
        # Up for longer than startsecs (2 s), so supervisord calls it RUNNING and starts it again at once
        # when it exits: only the changed pid shows that it never served.
        "slowcrash": (_python("import sys, time; time.sleep(3); print('bind: address already in use', "
                              "file=sys.stderr); sys.exit(1)"), ports["slowcrash"]),
        # Alive, never listening; the port answers, but from another process (this test's socket).
        "idle": (_python("import time; time.sleep(600)"), squatter.getsockname()[1]),
    }
    tasks = [{"ansible.builtin.setup": {"gather_subset": ["min"]}},
             {"ansible.builtin.include_role": {"name": "local_supervisor"}},
             {"ansible.builtin.set_fact": {"outcomes": {}}}]
    for name, (command, port) in programs.items():
        tasks.append({"block": [
            {"ansible.builtin.include_role": {"name": "local_supervisor", "tasks_from": "program.yml"},
             "vars": {"local_supervisor_program": {"name": name, "command": command, "wait_port": port},
                      **({"local_supervisor_wait_timeout": SQUAT_TIMEOUT} if name == "idle" else {})}},
            {"ansible.builtin.set_fact": {"outcomes": f"{{{{ outcomes | combine({{'{name}': 'ok'}}) }}}}"}}],
            "rescue": [{"ansible.builtin.set_fact": {
                "outcomes": f"{{{{ outcomes | combine({{'{name}': ansible_failed_result.msg}}) }}}}"}}]})
    tasks.append({"ansible.builtin.debug": {"var": "outcomes"}})
    play = [{"hosts": "localhost", "connection": "local", "gather_facts": False,
             "vars": {"ansible_python_interpreter": sys.executable, "local_supervisor_dir": str(folder)},
             "tasks": tasks}]
    (tmp / "play.yml").write_text(yaml.safe_dump(play, sort_keys=False))
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_ROLES_PATH": str(ROOT / "roles"),
           "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json", "ANSIBLE_NOCOLOR": "1"}
    try:
        proc = subprocess.run([str(BIN / "ansible-playbook"), "-i", "localhost,", str(tmp / "play.yml")],
                              capture_output=True, text=True, env=env, cwd=tmp, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
        last = json.loads(proc.stdout)["plays"][0]["tasks"][-1]
        yield last["hosts"]["localhost"]["outcomes"]
    finally:
        squatter.close()
        if (folder / "supervisord.conf").exists():
            subprocess.run([str(BIN / "supervisorctl"), "-c", str(folder / "supervisord.conf"), "shutdown"],
                           capture_output=True, timeout=120)


def test_program_that_listens_is_waited_for(outcomes):
    assert outcomes["web"] == "ok"


def test_program_that_exits_at_once_stops_the_play_with_its_log(outcomes):
    msg = outcomes["broken"]
    # Within startsecs that is BACKOFF ("Exited too quickly"); on a loaded machine it may exit later, and
    # then it is the new pid that gives it away: either way, at once and with the program's own words.
    assert msg.startswith("broken exited during start-up ("), msg
    assert "the last lines of its log" in msg and "  cannot start: PREDICTION_EXAMPLE is wrong" in msg.splitlines()


def test_program_that_exits_after_startsecs_is_not_hidden_by_its_restart(outcomes):
    msg = outcomes["slowcrash"]
    assert msg.startswith("slowcrash exited during start-up"), msg
    assert "  bind: address already in use" in msg.splitlines(), msg


def test_another_process_on_the_port_does_not_count(outcomes):
    msg = outcomes["idle"]
    assert msg.startswith("idle did not listen on port ") and f"within {SQUAT_TIMEOUT} s" in msg, msg
