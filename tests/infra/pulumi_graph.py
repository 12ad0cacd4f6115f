"""The Pulumi tests' view of one program run: the real program over a real stack file, under the
stack emulator's mock engine (stack_emulator/program.py), with made-up image ids so no engine is
needed. Graph and Resource come from there."""
from __future__ import annotations

from pathlib import Path

import base64

from stack_emulator.program import (CONTAINER, IMAGE, NETWORK, REMOTE_IMAGE, ROOT, SECRET, SERVICE,  # noqa: F401
                                    SERVICE_CONFIG, STACKS, VOLUME, Graph, ProgramFailed, Resource, run_program,
                                    stack_file)
from stack_emulator.values import is_secret, plain_strings, reveal  # noqa: F401


def run_stack(stack: str, workdir: Path | None = None, overrides: dict | None = None) -> Graph:
    """Run infra/ for ``stack``; ``overrides``: {"config": {...}, "secrets": {...}} as `pulumi config
    set [--path] [--secret]` would set them. Raises ProgramFailed with the program's stderr."""
    overrides = overrides or {}
    return run_program(stack, mode="up", config=overrides.get("config"), secrets=overrides.get("secrets"),
                       realise_images="stand-in")


def remote_image_id(graph: Graph, image_ref: str) -> str:
    """The image id a container must use to run RemoteImage ``image_ref`` (as the stand-in answers)."""
    matches = [r for r in graph.of_type(REMOTE_IMAGE) if r.get("name") == image_ref]
    assert len(matches) == 1, f"no RemoteImage {image_ref}; have {[r.get('name') for r in graph.of_type(REMOTE_IMAGE)]}"
    return matches[0].outputs["imageId"]


def orchestrator(stack: str) -> str:
    """"engine" or "swarm": the stack file's orchestrator.kind."""
    return (stack_file(stack).get("orchestrator") or {}).get("kind", "engine")


ENGINE_STACKS = tuple(s for s in STACKS if orchestrator(s) == "engine")
SWARM_STACKS = tuple(s for s in STACKS if orchestrator(s) == "swarm")


def workload(graph: Graph, logical: str) -> Resource:
    """The container or Swarm service the program calls ``logical``."""
    found = [r for r in graph.resources if r.name == logical and r.type in (CONTAINER, SERVICE)]
    assert len(found) == 1, f"expected one container or service named {logical}, found {len(found)}"
    return found[0]


def files_of(graph: Graph, logical: str) -> dict[str, str]:
    """path -> content of every file a workload is given: a container's uploads, or a service's
    configs and secrets (their data decoded)."""
    r = workload(graph, logical)
    if r.type == CONTAINER:
        return {u["file"]: u["content"] for u in r.get("uploads", [])}
    spec = r.get("taskSpec")["containerSpec"]
    by_name = {x.get("name"): x for x in graph.of_type(SERVICE_CONFIG) + graph.of_type(SECRET)}
    out = {}
    for ref in spec.get("configs", []) + spec.get("secrets", []):
        obj = by_name[ref.get("configName") or ref.get("secretName")]
        out[ref["fileName"]] = base64.b64decode(obj.get("data")).decode()
    return out
