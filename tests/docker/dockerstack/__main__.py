"""`make stack-up|stack-down|stack-status STACK=<dev|staging|prod>`:

    python -m dockerstack up <stack>      build what is missing, start the stack, wait until healthy,
                                      write var/stack-<stack>.env
    python -m dockerstack down <stack>    remove it (volumes too unless KEEP_VOLUMES=1)
    python -m dockerstack status <stack>  each container with its state and health

STACK_PORTS=free publishes every host port on a free 127.0.0.1 port instead of the stack file's.
Errors are one line naming the cause and the fix; a failed `up` leaves nothing behind.
"""
from __future__ import annotations

import os
import sys

from .stack import StackError, down, engine_client, state_path, up


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("up", "down", "status"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    verb, stack = argv
    try:
        if verb == "up":
            run = up(stack, ports=os.environ.get("STACK_PORTS", "exact"))
            print(f"stack {stack} healthy in {run.deployment.seconds_to_healthy:.0f}s ({len(run.deployment.containers)} containers)")
            for (container, port), (ip, host_port) in sorted(run.deployment.ports.items()):
                print(f"  {container:<36} {port:<9} -> {ip}:{host_port}")
            for logical, why in run.deployment.skipped.items():
                print(f"  not run: {logical} ({why})")
            print(f"  gateway   {run.env['GATEWAY_URL']}  (CA: {run.env['CA_CERT']})")
            print(f"  env file  {run.env_file}   (set -a; . {run.env_file}; set +a)")
        elif verb == "down":
            removed = down(stack, keep_volumes=os.environ.get("KEEP_VOLUMES") == "1")
            print(f"stack {stack}: removed {len(removed)} objects" if removed else f"stack {stack} is not up")
        else:
            if not state_path(stack).is_file():
                print(f"stack {stack} is not up")
                return 1
            import json
            containers = json.loads(state_path(stack).read_text())["deployment"]["containers"].values()
            client = engine_client()
            for name in containers:
                c = client.containers.get(name)
                health = (c.attrs["State"].get("Health") or {}).get("Status", "-")
                print(f"  {name:<36} {c.status:<10} {health}")
    except StackError as exc:
        print(f"stack-{verb}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
