"""`make stack-up|stack-preview|stack-down|stack-status STACK=<stack>`:

    python -m stack_emulator up <stack>       plan against the stack's state and apply it (like pulumi up)
    python -m stack_emulator preview <stack>  print the plan only (like pulumi preview); needs no engine
    python -m stack_emulator down <stack>     destroy it (like pulumi destroy)
    python -m stack_emulator status <stack>   each container with its state and health
    python -m stack_emulator check <stack>    what needs no engine: the stack name, the program over its file

Environment: STACK_PORTS=free publishes every host port on a free 127.0.0.1 port (kept across runs);
REPLACE=name[,name] (up) replaces those resources whatever their diff, like pulumi up --replace;
KEEP_VOLUMES=1 (down) keeps the volumes and the secrets their data was made with;
EXCLUDE_PROTECTED=1 (down) keeps protected resources; UNPROTECT=1 (down) destroys them too.
Errors are one line naming the cause and the fix.
"""
from __future__ import annotations

import os
import sys

from .stack import StackError, check, down, preview, status, up


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("up", "preview", "down", "status", "check"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    verb, stack = argv
    flag = lambda name: os.environ.get(name) == "1"  # noqa: E731
    try:
        if verb == "check":
            check(stack)
        elif verb == "preview":
            print(preview(stack).render())
        elif verb == "up":
            replace = tuple(n for n in os.environ.get("REPLACE", "").split(",") if n)
            run = up(stack, ports=os.environ.get("STACK_PORTS") or None, replace=replace)
            c = run.plan.counts()
            print(f"stack {stack} up: " + (", ".join(f"{n} {k}d" if k != "same" else f"{n} unchanged"
                                                      for k, n in c.items()) or "no changes"))
            for name, state, health in status(stack):
                print(f"  {name:<44} {state:<10} {health}")
            print(f"  gateway   {run.env['GATEWAY_URL']}  (CA: {run.env['CA_CERT']})")
            print(f"  env file  {run.env_file}   (set -a; . {run.env_file}; set +a)")
        elif verb == "down":
            removed = down(stack, keep_volumes=flag("KEEP_VOLUMES"), exclude_protected=flag("EXCLUDE_PROTECTED"),
                           unprotect=flag("UNPROTECT"))
            print(f"stack {stack}: removed {len(removed)} objects" if removed else f"stack {stack} is not up")
        else:
            rows = status(stack)
            if not rows:
                print(f"stack {stack} is not up")
                return 1
            for name, state, health in rows:
                print(f"  {name:<44} {state:<10} {health}")
    except StackError as exc:
        print(f"stack-{verb}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
