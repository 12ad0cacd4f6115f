"""What each provider answers when the program registers a resource: its outputs.

The emulator's mock engine (``_runner.py``) calls ``answer()`` for every registration, so the program
sees the values it would see under `pulumi up`:

- A resource whose inputs did not change keeps the outputs recorded in the stack's state (Pulumi
  returns the old state for a "same" step): a generated password stays the password the database
  volume was initialised with, a generated certificate stays the one the gateway serves.
- New or changed random/tls resources get real values (computed.py); in a preview, unknowns.
- Images are real in "up" mode: a docker.RemoteImage is made present on the engine (a local stand-in
  of the pinned upstream image, images.py) and answers its real image id; a docker.Image is built
  when its build context changed — pulumi-docker's Check adds ``build.contextDigest``, a hash of the
  context (provider/provider.go ``hashContext``), and any input change is an update that rebuilds
  (``Diff`` returns DIFF_SOME, never a replacement) — and answers ``repoDigest`` = the image id,
  which is what the provider returns for an image it does not push (provider/image.go, skipPush).
  In a preview they are unknown unless unchanged, as `pulumi preview` shows them without
  ``buildOnPreview`` (the emulator never builds in a preview).
- Everything else echoes its inputs: the program reads no other computed output.
"""
from __future__ import annotations

import fnmatch
import hashlib
import os
from pathlib import Path

from . import computed
from .values import UNKNOWN, is_unknown, reveal

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"

RANDOM_PASSWORD = "random:index/randomPassword:RandomPassword"
PRIVATE_KEY = "tls:index/privateKey:PrivateKey"
SELF_SIGNED_CERT = "tls:index/selfSignedCert:SelfSignedCert"
REMOTE_IMAGE = "docker:index/remoteImage:RemoteImage"
IMAGE = "docker:index/image:Image"

# Image id answered for an upstream image with no local stand-in: its containers are not run.
NOT_AVAILABLE = "not-available:"
# Recorded on a container or service whose image cannot be had here (Grafana): why it does not run.
NOT_RUN = "__notRun__"

_COMPUTE = {RANDOM_PASSWORD: computed.random_password, PRIVATE_KEY: computed.private_key,
            SELF_SIGNED_CERT: computed.self_signed_cert}
_SECRET_OUTPUTS = {RANDOM_PASSWORD: ("result", "bcryptHash"), PRIVATE_KEY: ("privateKeyPem", "privateKeyPemPkcs8",
                                                                             "privateKeyOpenssh")}


def answer(typ: str, urn: str, inputs: dict, prior: dict | None, mode: str, realiser) -> dict:
    """The outputs the provider returns for one registration (secrets wrapped as in the engine)."""
    if typ == IMAGE:
        inputs["build"] = {**(inputs.get("build") or {}), "contextDigest": context_digest(reveal(inputs))}
    same = prior is not None and prior.get("type") == typ and reveal(prior["inputs"]) == reveal(inputs)
    if same:
        return prior["outputs"]
    if typ in _COMPUTE:
        if mode == "preview":
            return {**inputs, **{k: UNKNOWN for k in ("result", "privateKeyPem", "certPem", "publicKeyPem")}}
        values = _COMPUTE[typ](reveal(inputs))
        secret = _SECRET_OUTPUTS.get(typ, ())
        return {**inputs, **{k: ({"__secret__": v} if k in secret else v) for k, v in values.items()}}
    if typ == REMOTE_IMAGE:
        if realiser is None:
            return {**inputs, "imageId": UNKNOWN, "repoDigest": UNKNOWN}
        image_id = realiser.remote_image(reveal(inputs))
        return {**inputs, "imageId": image_id, "repoDigest": image_id}
    if typ == IMAGE:
        if realiser is None:
            return {**inputs, "repoDigest": UNKNOWN}
        return {**inputs, "repoDigest": realiser.build(reveal(inputs))}
    return dict(inputs)


def to_engine(outputs: dict):
    """Outputs as the mock engine hands them back to the program: secrets as secret values,
    unknowns as the engine's unknown marker."""
    from pulumi.runtime import rpc

    def convert(v):
        if is_unknown(v):
            return rpc.UNKNOWN
        if isinstance(v, dict) and set(v) == {"__secret__"}:
            return {rpc._special_sig_key: rpc._special_secret_sig, "value": convert(v["__secret__"])}
        if isinstance(v, dict):
            return {k: convert(x) for k, x in v.items()}
        if isinstance(v, list):
            return [convert(x) for x in v]
        return v
    return {k: convert(v) for k, v in outputs.items()}


class StandInImages:
    """Image ids without an engine, for tests of the program alone: a stable digest of the image
    reference (RemoteImage) or of the image name and its build context (Image)."""

    def remote_image(self, inputs: dict) -> str:
        return "sha256:" + hashlib.sha256(inputs["name"].encode()).hexdigest()

    def build(self, inputs: dict) -> str:
        key = inputs["imageName"] + (inputs.get("build") or {}).get("contextDigest", "")
        return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


class ImageRealiser:
    """Makes images exist on the engine during an "up" run of the program (see module doc)."""

    def __init__(self):
        from .engine import engine_client
        from .images import Images
        self.images = Images(engine_client())

    def remote_image(self, inputs: dict) -> str:
        """The image's id; for an image that cannot be had here (Grafana), a marker the provider
        reads as "not run" (docker_provider.py)."""
        if not self.images.buildable(inputs["name"]):
            return f"{NOT_AVAILABLE}{inputs['name']}"
        return self.images.ensure(inputs["name"])

    def build(self, inputs: dict) -> str:
        context, dockerfile = build_paths(inputs)
        build = inputs.get("build") or {}
        return self.images.build_service(inputs["imageName"], context, dockerfile, build.get("platform"),
                                         build.get("target"))


def build_paths(inputs: dict) -> tuple[Path, Path]:
    """The build context and Dockerfile of a docker.Image, relative paths taken from infra/ (the
    program's working directory, where the CLI runs it)."""
    build = inputs.get("build") or {}
    context = (INFRA / build.get("context", ".")).resolve()
    dockerfile = (INFRA / build["dockerfile"]).resolve() if build.get("dockerfile") else context / "Dockerfile"
    return context, dockerfile


# False when the program only checks a stack file (stack.check): the wheelhouse is not downloaded then.
PREPARE_CONTEXTS = True


def context_digest(inputs: dict) -> str:
    """pulumi-docker's ``hashContext`` (provider/provider.go): the Dockerfile under the name
    "Dockerfile", then every file of the context not excluded by the .dockerignore, each as its
    relative path, mode and content hash. The service image's wheelhouse is part of its context, so
    it is downloaded first (as the build needs it)."""
    from .images import wheelhouse

    context, dockerfile = build_paths(inputs)
    if not context.is_dir() or not dockerfile.is_file():
        return UNKNOWN
    if PREPARE_CONTEXTS and (context / "requirements.txt").is_file() and (context / "wheelhouse").is_dir():
        wheelhouse(context / "requirements.txt")
    ignore_file = Path(f"{dockerfile}.dockerignore")
    if not ignore_file.is_file():
        ignore_file = context / ".dockerignore"
    patterns = _ignore_patterns(ignore_file) if ignore_file.is_file() else []
    acc = hashlib.sha256()

    def add(path: Path, rel: str, mode: int) -> None:
        content = hashlib.sha256(path.read_bytes()).digest() if path.is_file() else b""
        acc.update(rel.encode() + oct(mode).encode() + content + b"\0")

    add(dockerfile, "Dockerfile", 0)
    for dirpath, dirnames, filenames in os.walk(context):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath, name)
            rel = path.relative_to(context).as_posix()
            if not _ignored(rel, patterns):
                add(path, rel, path.stat().st_mode)
    return acc.hexdigest()


def _ignore_patterns(path: Path) -> list[tuple[bool, str]]:
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        out.append((negate, line.lstrip("!").strip().strip("/")))
    return out


def _ignored(rel: str, patterns: list[tuple[bool, str]]) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins; a pattern matches a path or any
    of its parent folders; ``**`` matches any number of folders."""
    parts = rel.split("/")
    result = False
    for negate, pattern in patterns:
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if _match(pattern, prefix):
                result = not negate
                break
    return result


def _match(pattern: str, path: str) -> bool:
    if pattern.startswith("**/"):
        rest = pattern[3:]
        segments = path.split("/")
        return any(_match(rest, "/".join(segments[i:])) for i in range(len(segments)))
    if pattern.count("/") != path.count("/"):
        return False
    return all(fnmatch.fnmatchcase(s, p) for s, p in zip(path.split("/"), pattern.split("/")))
