"""Every program of the environment runs under supervisord, and nothing else is supervised."""
import re

from host_expectations import run_ok


def _status(host, localenv) -> dict[str, tuple[str, str]]:
    out = host.run(f"{localenv['supervisorctl']} status")
    assert out.rc in (0, 3), (f"supervisord is not answering ({out.rc}): {out.stdout}{out.stderr}\n"
                              f"start the environment with `make up`")
    states = {}
    for line in out.stdout.splitlines():
        parts = line.split(None, 2)
        if len(parts) >= 2:
            states[parts[0]] = (parts[1], parts[2] if len(parts) > 2 else "")
    return states


def test_supervisord_runs(host, localenv):
    pid = run_ok(host, f"{localenv['supervisorctl']} pid").strip()
    assert pid.isdigit(), f"supervisorctl pid answered {pid!r}"
    assert host.process.get(pid=int(pid)), f"supervisord pid {pid} is not a running process"


def test_every_program_running(host, localenv):
    states = _status(host, localenv)
    problems = [f"{name}: {states.get(name, ('MISSING', ''))[0]} {states.get(name, ('', ''))[1]}".strip()
                for name in localenv["programs"] if states.get(name, ("MISSING",))[0] != "RUNNING"]
    assert not problems, "programs not RUNNING under supervisord:\n  " + "\n  ".join(problems)


def test_no_unexpected_program(host, localenv):
    extra = sorted(set(_status(host, localenv)) - set(localenv["programs"]))
    assert not extra, f"supervisord runs programs the inventory does not describe: {extra}"


def test_programs_are_children_of_supervisord(host, localenv):
    supervisord = int(run_ok(host, f"{localenv['supervisorctl']} pid").strip())
    states = _status(host, localenv)
    wrong = []
    for name in localenv["programs"]:
        m = re.search(r"pid (\d+)", states.get(name, ("", ""))[1])
        if not m:
            wrong.append(f"{name}: no pid in status")
            continue
        ppid = int(run_ok(host, f"ps -o ppid= -p {m.group(1)}").strip())
        if ppid != supervisord:
            wrong.append(f"{name}: pid {m.group(1)} has parent {ppid}, not supervisord {supervisord}")
    assert not wrong, "\n".join(wrong)
