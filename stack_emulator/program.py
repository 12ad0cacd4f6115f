"""Run the real Pulumi program for one real stack file and read back what it registered.

Each run is a fresh interpreter (``_runner.py``): the program's modules and Pulumi's runtime state
are process-global, exactly as each `pulumi preview`/`pulumi up` starts the program anew.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .values import reveal

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "prediction-platform"

CONTAINER = "docker:index/container:Container"
NETWORK = "docker:index/network:Network"
VOLUME = "docker:index/volume:Volume"
REMOTE_IMAGE = "docker:index/remoteImage:RemoteImage"
IMAGE = "docker:index/image:Image"
SERVICE = "docker:index/service:Service"
SECRET = "docker:index/secret:Secret"
SERVICE_CONFIG = "docker:index/serviceConfig:ServiceConfig"


def stacks() -> tuple[str, ...]:
    """The stacks this repository defines, one Pulumi.<stack>.yaml each: dev, staging, prod, then others."""
    order = {"dev": 0, "staging": 1, "prod": 2}
    return tuple(sorted((p.name.split(".")[1] for p in ROOT.glob("Pulumi.*.yaml")), key=lambda s: (order.get(s, 3), s)))


STACKS = stacks()


class ProgramFailed(Exception):
    """The program raised (a config error names the key); the message is its stderr's tail."""


class ImagesFailed(Exception):
    """An image the program registers could not be made on the engine (build failed, nothing to pull)."""


# Exit status of _runner.py when an image could not be made (its message is the last stderr line).
IMAGE_FAILURE = 3


def stack_file(stack: str) -> dict:
    """The stack file's config with the project prefix stripped: {"service": {...}, ...}."""
    data = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text()) or {}
    return {k.split(":", 1)[1] if k.startswith(f"{PROJECT}:") else k: v
            for k, v in (data.get("config") or {}).items()}


def run_program(stack: str, *, mode: str = "up", config: dict | None = None, secrets: dict | None = None,
                prior: dict | None = None, realise_images: bool | str = True, timeout: float = 1800) -> "Graph":
    """Run infra/ for ``stack`` under the emulator's mock engine.

    ``mode``: "preview" (unknowns where a value is known only after apply, no image built) or "up"
    (images realised on the engine when ``realise_images``; "stand-in": stable made-up image ids,
    no engine). ``config``/``secrets`` override stack-file
    keys as `pulumi config set [--secret]` does. ``prior``: URN -> recorded resource of the stack's
    state, whose outputs are kept for unchanged inputs."""
    with tempfile.TemporaryDirectory(prefix=f"stack-{stack}-") as work:
        spec = Path(work) / "spec.json"
        out = Path(work) / "graph.json"
        spec.write_text(json.dumps({"stack": stack, "mode": mode, "config": config or {}, "secrets": secrets or {},
                                    "prior": prior or {}, "realise_images": realise_images, "out": str(out)}))
        proc = subprocess.run([sys.executable, "-m", "stack_emulator._runner", str(spec)], cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout,
                              env=_env())
        if proc.returncode == IMAGE_FAILURE:
            said = [line for line in proc.stderr.splitlines() if line.startswith("image error: ")]
            raise ImagesFailed((said or proc.stderr.strip().splitlines()[-1:] or ["?"])[-1].removeprefix("image error: "))
        if proc.returncode != 0:
            raise ProgramFailed(proc.stderr[-4000:])
        for line in proc.stderr.splitlines():
            if line.startswith("[images]"):
                print(line, file=sys.stderr, flush=True)
        return Graph(json.loads(out.read_text()))


def _env() -> dict:
    import os
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": f"{ROOT}:{path}" if path else str(ROOT)}


def program_error(exc: ProgramFailed) -> str:
    """The one line of a failed program run that says what is wrong (its exception message)."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    reason = next((line for line in reversed(lines) if re.match(r"^[\w.]*(Error|Exception)\b", line.strip())),
                  lines[-1] if lines else "")
    # "config.ConfigError: prediction-platform:… must …" -> the message itself
    return re.sub(r"^[\w.]*(Error|Exception): ", "", reason.strip())


@dataclass
class Resource:
    """One registration: what the program asked for (``inputs``) and the provider answered."""
    urn: str
    type: str
    name: str
    custom: bool
    parent: str
    inputs: dict  # secrets wrapped as {"__secret__": ...}, unknowns as {"__unknown__": true}
    outputs: dict
    options: dict = field(default_factory=dict)

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

    def to_json(self) -> dict:
        return {"urn": self.urn, "type": self.type, "name": self.name, "custom": self.custom, "parent": self.parent,
                "inputs": self.inputs, "outputs": self.outputs, "options": self.options}


class Graph:
    """Every resource one run of the program registered, in registration order (which follows the
    program's dependencies), and the stack's exports."""

    def __init__(self, data: dict):
        self.stack = data["stack"]
        self.mode = data.get("mode", "up")
        self.resources = [Resource(r["urn"], r["type"], r["name"], r["custom"], r.get("parent", ""), r["inputs"],
                                   r["outputs"], r.get("options", {})) for r in data["resources"]]
        self.urns = [r.urn for r in self.resources]
        self.exports = data["exports"]
        self.logs = data["logs"]

    def export(self, name: str):
        return reveal(self.exports[name]["value"])

    def of_type(self, typ: str) -> list[Resource]:
        return [r for r in self.resources if r.type == typ]

    def one(self, typ: str, name: str) -> Resource:
        found = [r for r in self.resources if r.type == typ and r.name == name]
        assert len(found) == 1, f"expected one {typ} named {name}, found {len(found)}"
        return found[0]

    def by_urn(self, urn: str) -> Resource:
        return next(r for r in self.resources if r.urn == urn)

    def container(self, name: str) -> Resource:
        return self.one(CONTAINER, name)

    def replicas(self) -> list[Resource]:
        return sorted((r for r in self.of_type(CONTAINER) if re.fullmatch(r"service-\d+", r.name)),
                      key=lambda r: int(r.name.rsplit("-", 1)[1]))
