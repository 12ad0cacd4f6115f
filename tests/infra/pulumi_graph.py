"""Helpers for the Pulumi tests: run one stack through stack_runner.py and query the recorded graph."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("stack_runner.py")
PROJECT = "prediction-platform"
STACKS = ("dev", "staging", "prod")

CONTAINER = "docker:index/container:Container"
NETWORK = "docker:index/network:Network"
VOLUME = "docker:index/volume:Volume"
REMOTE_IMAGE = "docker:index/remoteImage:RemoteImage"
IMAGE = "docker:index/image:Image"


class ProgramFailed(Exception):
    pass


def stack_file(stack: str) -> dict:
    """The stack file's config with the project prefix stripped: {"service": {...}, ...}."""
    data = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text()) or {}
    return {k.split(":", 1)[1] if k.startswith(f"{PROJECT}:") else k: v
            for k, v in (data.get("config") or {}).items()}


def run_stack(stack: str, workdir: Path, overrides: dict | None = None) -> "Graph":
    """Run infra/__main__.py for ``stack`` in a fresh interpreter; raise ProgramFailed with its stderr."""
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / f"{stack}.json"
    args = [sys.executable, str(RUNNER), stack, str(out)]
    if overrides is not None:
        (workdir / "overrides.json").write_text(json.dumps(overrides))
        args.append(str(workdir / "overrides.json"))
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise ProgramFailed(proc.stderr[-4000:])
    return Graph(json.loads(out.read_text()))


def is_secret(value) -> bool:
    return isinstance(value, dict) and set(value) == {"__secret__"}


def reveal(value):
    """The value with every secret wrapper removed (for reading what the engine receives)."""
    if is_secret(value):
        return reveal(value["__secret__"])
    if isinstance(value, dict):
        return {k: reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [reveal(v) for v in value]
    return value


def plain_strings(value):
    """Every string reachable in ``value`` without passing through a secret wrapper."""
    if is_secret(value):
        return
    if isinstance(value, dict):
        for v in value.values():
            yield from plain_strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from plain_strings(v)
    elif isinstance(value, str):
        yield value


@dataclass
class Resource:
    type: str
    name: str
    custom: bool
    inputs: dict  # raw, secrets wrapped as {"__secret__": ...}
    outputs: dict  # what the provider would add (tests/infra/provider_outputs.py)
    options: dict  # deleteBeforeReplace, protect

    def get(self, key, default=None):
        """Input ``key`` with secret wrappers removed."""
        return reveal(self.inputs.get(key, default))

    def env(self) -> dict[str, str]:
        return dict(e.split("=", 1) for e in self.get("envs", []))

    def upload(self, path: str) -> str:
        for u in self.get("uploads", []):
            if u["file"] == path:
                return u["content"]
        raise KeyError(f"{self.name} has no upload {path}; uploads: {[u['file'] for u in self.get('uploads', [])]}")

    def networks(self) -> set[str]:
        return {n["name"] for n in self.get("networksAdvanced", [])}

    def ports(self) -> list[dict]:
        return self.get("ports", [])


class Graph:
    def __init__(self, data: dict):
        self.stack = data["stack"]
        self.resources = [Resource(r["type"], r["name"], r["custom"], r["inputs"], r["outputs"], r.get("options", {})) for r in data["resources"]]
        self.urns = data["urns"]
        self.exports = data["exports"]
        self.logs = data["logs"]

    def of_type(self, typ: str) -> list[Resource]:
        return [r for r in self.resources if r.type == typ]

    def one(self, typ: str, name: str) -> Resource:
        found = [r for r in self.resources if r.type == typ and r.name == name]
        assert len(found) == 1, f"expected one {typ} named {name}, found {len(found)}"
        return found[0]

    def container(self, name: str) -> Resource:
        return self.one(CONTAINER, name)

    def replicas(self) -> list[Resource]:
        return sorted((r for r in self.of_type(CONTAINER) if re.fullmatch(r"service-\d+", r.name)),
                      key=lambda r: int(r.name.rsplit("-", 1)[1]))

    def remote_image_id(self, image_ref: str) -> str:
        """The image id a container must use to run RemoteImage ``image_ref`` (as the mock answers)."""
        import hashlib
        matches = [r for r in self.of_type(REMOTE_IMAGE) if r.get("name") == image_ref]
        assert len(matches) == 1, f"no RemoteImage {image_ref}; have {[r.get('name') for r in self.of_type(REMOTE_IMAGE)]}"
        return f"sha256:{hashlib.sha256(image_ref.encode()).hexdigest()}"
