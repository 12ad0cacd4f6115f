"""A stack's state, as Pulumi's checkpoint keeps it: every resource as realised (inputs, outputs, id,
options, dependencies), in creation order, plus what the emulator needs to reach it again.

One file per stack, ``var/stacks/<stack>/state.json``, mode 0600 in a 0700 folder: it holds the
generated secrets (the database passwords among them), so it is the stack's memory — the next
`make stack-up` diffs against it, as the next `pulumi up` diffs against the checkpoint. Written
atomically after every step, so a failed run leaves an accurate record of what exists.
"""
from __future__ import annotations

import fcntl
import json
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VAR = ROOT / "var"


class StateLocked(Exception):
    """Another run holds the stack's lock."""


@dataclass
class StateResource:
    urn: str
    type: str
    name: str
    custom: bool
    parent: str
    id: str
    inputs: dict
    outputs: dict
    options: dict = field(default_factory=dict)
    # Set when the provider created the resource but its create failed (a container that never
    # turned healthy): Pulumi keeps it with its init errors (pkg/resource/deploy/step_generator.go).
    init_errors: list = field(default_factory=list)
    # A replaced resource whose delete has not happened yet (its run failed before the delete phase).
    pending_delete: bool = False

    @property
    def dependencies(self) -> set[str]:
        """Every URN this resource depends on: dependsOn and the property dependencies."""
        deps = set(self.options.get("dependsOn", []))
        for urns in self.options.get("propertyDependencies", {}).values():
            deps.update(urns)
        return deps

    def to_json(self) -> dict:
        return {"urn": self.urn, "type": self.type, "name": self.name, "custom": self.custom, "parent": self.parent,
                "id": self.id, "inputs": self.inputs, "outputs": self.outputs, "options": self.options,
                "initErrors": self.init_errors, "pendingDelete": self.pending_delete}

    @classmethod
    def from_json(cls, d: dict) -> "StateResource":
        return cls(d["urn"], d["type"], d["name"], d["custom"], d.get("parent", ""), d.get("id", ""), d["inputs"],
                   d["outputs"], d.get("options", {}), d.get("initErrors", []), d.get("pendingDelete", False))


@dataclass
class StackState:
    stack: str
    path: Path
    resources: list[StateResource] = field(default_factory=list)
    # Settings of the emulator for this stack, kept across runs: the name prefix and config
    # overrides a test gave, and the host-port remapping (STACK_PORTS=free).
    settings: dict = field(default_factory=dict)
    exports: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # -- lookup ---------------------------------------------------------------------------------
    def get(self, urn: str) -> StateResource | None:
        return next((r for r in self.resources if r.urn == urn and not r.pending_delete), None)

    def live(self) -> list[StateResource]:
        return [r for r in self.resources if not r.pending_delete]

    def prior(self) -> dict[str, dict]:
        """URN -> what the program's mock engine may answer again for unchanged inputs."""
        return {r.urn: {"type": r.type, "inputs": r.inputs, "outputs": r.outputs, "id": r.id}
                for r in self.live() if not r.init_errors}

    # -- changes (thread-safe: steps run in parallel) ----------------------------------------------
    def put(self, resource: StateResource) -> None:
        with self._lock:
            for i, r in enumerate(self.resources):
                if r.urn == resource.urn and not r.pending_delete:
                    self.resources[i] = resource
                    break
            else:
                self.resources.append(resource)
            self._save()

    def mark_pending_delete(self, resource: StateResource) -> None:
        with self._lock:
            resource.pending_delete = True
            self._save()

    def remove(self, resource: StateResource) -> None:
        with self._lock:
            self.resources = [r for r in self.resources if r is not resource]
            self._save()

    def save(self) -> None:
        with self._lock:
            self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"stack": self.stack, "settings": self.settings, "exports": self.exports,
                       "resources": [r.to_json() for r in self.resources]}, f, indent=1)
        os.replace(tmp, self.path)


def stack_dir(stack: str, var_dir: Path = VAR) -> Path:
    return var_dir / "stacks" / stack


def load(stack: str, var_dir: Path = VAR) -> StackState:
    path = stack_dir(stack, var_dir) / "state.json"
    if not path.is_file():
        return StackState(stack, path)
    data = json.loads(path.read_text())
    return StackState(stack, path, [StateResource.from_json(r) for r in data["resources"]],
                      data.get("settings", {}), data.get("exports", {}))


@contextmanager
def locked(stack: str, var_dir: Path = VAR):
    """One run at a time per stack, as a Pulumi backend locks a stack during an update."""
    folder = stack_dir(stack, var_dir)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateLocked(f"stack {stack} is being changed by another run ({folder}/.lock)") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
