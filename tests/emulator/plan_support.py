"""Hand-made registrations and states for the stack emulator's plan tests (not in conftest.py, so
test modules import it by a unique name)."""
from __future__ import annotations

from pathlib import Path

from stack_emulator.program import Graph
from stack_emulator.state import StackState, StateResource

PREFIX = "urn:pulumi:t::p::"
CONTAINER = "docker:index/container:Container"
NETWORK = "docker:index/network:Network"
VOLUME = "docker:index/volume:Volume"
IMAGE = "docker:index/image:Image"
PASSWORD = "random:index/randomPassword:RandomPassword"


def urn(typ: str, name: str) -> str:
    return f"{PREFIX}{typ}::{name}"


def resource(typ: str, name: str, inputs: dict, *, depends_on=(), deps: dict | None = None, **options) -> dict:
    """One registration as the program's mock engine records it."""
    return {"urn": urn(typ, name), "type": typ, "name": name, "custom": True, "parent": "", "inputs": inputs,
            "outputs": dict(inputs), "options": {"dependsOn": [urn(*d) if isinstance(d, tuple) else d
                                                               for d in depends_on],
                                                 "propertyDependencies": {k: [urn(*d) for d in v]
                                                                          for k, v in (deps or {}).items()},
                                                 "deleteBeforeReplace": None, **options}}


def graph(*resources: dict) -> Graph:
    return Graph({"stack": "t", "resources": list(resources), "exports": {}, "logs": []})


def state_of(g: Graph, tmp: Path, **changes) -> StackState:
    """The state after `g` was applied (each resource's id its name), with ``changes`` (name ->
    StateResource field overrides) applied."""
    st = StackState("t", tmp / "state.json")
    for r in g.resources:
        record = StateResource(r.urn, r.type, r.name, r.custom, r.parent, f"{r.name}-id", r.inputs, r.outputs,
                               r.options)
        for field, value in changes.get(r.name, {}).items():
            setattr(record, field, value)
        st.resources.append(record)
    return st
