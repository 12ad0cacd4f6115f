"""The Pulumi tests' view of one program run: the real program over a real stack file, under the
stack emulator's mock engine (stack_emulator/program.py), with made-up image ids so no engine is
needed. Graph and Resource come from there."""
from __future__ import annotations

from pathlib import Path

from stack_emulator.program import (CONTAINER, IMAGE, NETWORK, REMOTE_IMAGE, ROOT, STACKS, VOLUME, Graph,  # noqa: F401
                                    ProgramFailed, Resource, run_program, stack_file)
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
