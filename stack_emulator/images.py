"""Images for a stack on a Docker engine with no registry: local builds of the upstream images the
stack files pin (stack_emulator/stand_ins/<folder>/), and the service image built offline.

A pinned image that is already on the engine is used as it is (a real upstream image pulled by a
user, or an earlier local build whose recipe is unchanged). A local build carries the labels
``com.prediction.local-build`` (the upstream reference it stands in for) and ``com.prediction.recipe``
(a hash of its build context), so a changed recipe is rebuilt.
"""
from __future__ import annotations

import fcntl
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors

ROOT = Path(__file__).resolve().parents[1]
# One folder per upstream image the stack files pin: the recipe of its local stand-in.
IMAGES_DIR = Path(__file__).resolve().parent / "stand_ins"
BASE_TAG = "prediction-local/debian:bookworm"
LOCAL_BUILD = "com.prediction.local-build"
RECIPE = "com.prediction.recipe"
WHEELHOUSE = ROOT / "service/wheelhouse"


class ImageError(Exception):
    """An image cannot be had; the message names the image, the cause and the fix."""


@dataclass(frozen=True)
class Recipe:
    """How to build a stand-in for ``repository:<one of tags>``."""
    folder: str
    tags: tuple[str, ...]
    # scripts/sources.lock names whose verified archives go into the context as <name>.tar.gz
    sources: tuple[str, ...] = ()
    # extra files from the repository: name in the context -> path under ROOT
    files: dict[str, str] = field(default_factory=dict)


# The upstream images the stack files pin. Grafana has no Debian package and no source here: its
# container is the one a stack run on this engine does not start.
RECIPES: dict[str, Recipe] = {
    "python": Recipe("python", ("3.11-slim",)),
    "timescale/timescaledb": Recipe("timescaledb", ("2.17.2-pg15",), sources=("timescaledb",),
                                    files={"build-timescaledb.sh": "scripts/build-timescaledb.sh"}),
    "redis": Recipe("redis", ("7.4.1",)),
    "nginx": Recipe("nginx", ("1.27.3",), sources=("nginx",)),
    "prom/prometheus": Recipe("prometheus", ("v2.55.1",)),
    "prom/node-exporter": Recipe("node-exporter", ("v1.8.2",)),
}
NOT_BUILDABLE = {"grafana/grafana": "Grafana has no Debian package and no source archive here"}


def split_ref(ref: str) -> tuple[str, str]:
    repository, _, tag = ref.rpartition(":")
    if not repository or "/" in tag:
        return ref, "latest"
    return repository, tag


def log(message: str) -> None:
    print(f"[images] {message}", file=sys.stderr, flush=True)


def source_archive(name: str) -> Path:
    proc = subprocess.run([str(ROOT / "scripts/fetch-source.sh"), name], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ImageError(proc.stderr.strip() or f"scripts/fetch-source.sh {name} failed")
    return Path(proc.stdout.strip())


class Images:
    """Makes sure the images a stack needs exist on ``client``'s engine."""

    def __init__(self, client: docker.DockerClient):
        self.client = client

    # -- lookup --------------------------------------------------------------------------------
    def _get(self, ref: str):
        try:
            return self.client.images.get(ref)
        except docker.errors.ImageNotFound:
            return None

    def buildable(self, ref: str) -> bool:
        repository, _ = split_ref(ref)
        return repository not in NOT_BUILDABLE

    def why_not(self, ref: str) -> str:
        return NOT_BUILDABLE.get(split_ref(ref)[0], "")

    # -- upstream stand-ins --------------------------------------------------------------------
    def ensure(self, ref: str) -> str:
        """Id of ``ref`` on the engine, building the local stand-in when it is missing or stale."""
        repository, tag = split_ref(ref)
        recipe = RECIPES.get(repository)
        present = self._get(ref)
        if present is not None and not (present.labels or {}).get(LOCAL_BUILD):
            return present.id  # the real upstream image
        if recipe is None:
            if present is not None:
                return present.id
            raise ImageError(f"{ref} is not on the Docker engine and there is no local recipe for {repository} "
                             f"(known: {', '.join(sorted(RECIPES))}); docker pull it or add one under {IMAGES_DIR}")
        if tag not in recipe.tags:
            raise ImageError(f"{ref}: the local recipe stack_emulator/stand_ins/{recipe.folder} stands in for "
                             f"{repository}:{' / '.join(recipe.tags)} only; pin that tag in the stack file or "
                             f"docker pull {ref}")
        base = self.ensure_base()
        digest = self._digest(recipe, base)
        if present is not None and present.labels.get(RECIPE) == digest:
            return present.id
        return self._build(ref, {"BASE": BASE_TAG}, {LOCAL_BUILD: ref, RECIPE: digest}, context=self._context(recipe))

    def unbuildable(self) -> list[str]:
        """Why some stand-in that needs building cannot be built here (a source archive that cannot be
        had); empty when every local recipe is built and current or can be built."""
        problems = []
        base = self._get(BASE_TAG)
        for repository, recipe in sorted(RECIPES.items()):
            for tag in recipe.tags:
                present = self._get(f"{repository}:{tag}")
                if present is not None and (not (present.labels or {}).get(LOCAL_BUILD) or (
                        base is not None and present.labels.get(RECIPE) == self._digest(recipe, base.id))):
                    continue
                for name in recipe.sources:
                    try:
                        source_archive(name)
                    except ImageError as exc:
                        problems.append(str(exc))
        return sorted(set(problems))

    def ensure_base(self) -> str:
        script = IMAGES_DIR / "debian/build.sh"
        base = self._get(BASE_TAG)
        if base is None:
            log(f"building {BASE_TAG} with debootstrap (about a minute)")
            started = time.monotonic()
            proc = subprocess.run([str(script), BASE_TAG], capture_output=True, text=True)
            if proc.returncode != 0:
                raise ImageError(f"{BASE_TAG}: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'build failed'}")
            log(f"built {BASE_TAG} in {time.monotonic() - started:.0f}s")
            base = self._get(BASE_TAG)
        return base.id

    @staticmethod
    def _digest(recipe: Recipe, base_id: str) -> str:
        """What a build of ``recipe`` depends on: the base image, the recipe's files and the pinned
        sha256 of its source archives (so checking needs no archive, only building does)."""
        h = hashlib.sha256(base_id.encode())
        folder = IMAGES_DIR / recipe.folder
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            h.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
        for name, rel in sorted(recipe.files.items()):
            path = ROOT / rel
            h.update(name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"missing"))
        lock = (ROOT / "scripts/sources.lock").read_text().splitlines()
        for name in recipe.sources:
            h.update("".join(line for line in lock if line.split(" ", 1)[0] == name).encode())
        return h.hexdigest()

    def _context(self, recipe: Recipe) -> bytes:
        """The build context as an uncompressed tar: the recipe folder, source archives, files."""
        entries: dict[str, Path] = {p.relative_to(IMAGES_DIR / recipe.folder).as_posix(): p
                                    for p in sorted((IMAGES_DIR / recipe.folder).rglob("*")) if p.is_file()}
        for name in recipe.sources:
            entries[f"{name}.tar.gz"] = source_archive(name)
        for name, rel in recipe.files.items():
            path = ROOT / rel
            if not path.is_file():
                raise ImageError(f"{rel} is missing: the {recipe.folder} image needs it")
            entries[name] = path
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name, path in sorted(entries.items()):
                info = tar.gettarinfo(str(path), arcname=name)
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                with path.open("rb") as f:
                    tar.addfile(info, f)
        return buf.getvalue()

    def _build(self, tag: str, buildargs: dict, labels: dict, *, context: bytes | None = None,
               path: Path | None = None, dockerfile: str | None = None, platform: str | None = None,
               target: str | None = None) -> str:
        """Build from an in-memory tar ``context`` or a folder ``path`` (its .dockerignore applies)."""
        log(f"building {tag}")
        started = time.monotonic()
        tail: list[str] = []
        image_id = None
        source = ({"fileobj": io.BytesIO(context), "custom_context": True} if context is not None
                  else {"path": str(path), "dockerfile": dockerfile})
        stream = self.client.api.build(**source, tag=tag, rm=True, forcerm=True, pull=False, buildargs=buildargs,
                                       labels=labels, platform=platform, target=target, decode=True)
        for chunk in stream:
            if "stream" in chunk:
                tail = (tail + chunk["stream"].splitlines())[-25:]
            if "aux" in chunk and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
            if "error" in chunk:
                detail = "\n".join(line for line in tail if line.strip())
                raise ImageError(f"building {tag} failed: {chunk['error'].strip()}\n{detail}")
        if image_id is None:
            image_id = self.client.images.get(tag).id
        log(f"built {tag} in {time.monotonic() - started:.0f}s")
        return image_id

    # -- the service image (docker.Image in infra/service.py) ----------------------------------
    def build_service(self, tag: str, context_dir: Path, dockerfile: Path, platform: str | None,
                      target: str | None = None) -> str:
        """Build service/Dockerfile as the program asks, offline: Python packages come from a
        wheelhouse downloaded on this host (pip inside a container cannot reach an index here),
        chosen by the Dockerfile's build arguments."""
        self.ensure(_from_image(dockerfile))
        wheelhouse(context_dir / "requirements.txt")
        # Labels are inherited: the stand-in base's local-build mark must not describe this image.
        return self._build(tag, {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "/wheelhouse"}, {LOCAL_BUILD: "", RECIPE: ""},
                           path=context_dir, dockerfile=os.path.relpath(dockerfile, context_dir), platform=platform,
                           target=target)


def _from_image(dockerfile: Path) -> str:
    """The image of the Dockerfile's first FROM (every stage of service/Dockerfile starts from it)."""
    for line in dockerfile.read_text().splitlines():
        if line.strip().upper().startswith("FROM "):
            return line.split()[1]
    raise ImageError(f"{dockerfile} has no FROM line")


def wheelhouse(requirements: Path) -> Path:
    """``pip download`` the image's packages (CPython 3.11, manylinux x86_64) into
    service/wheelhouse/, once per content of ``requirements`` — one download at a time, whoever asks
    (two images of a stack share the folder and are realised in parallel)."""
    stamp = WHEELHOUSE / ".requirements.sha256"
    want = hashlib.sha256(requirements.read_bytes()).hexdigest()
    if stamp.is_file() and stamp.read_text().strip() == want:
        return WHEELHOUSE
    with _WHEELHOUSE_THREADS, open(WHEELHOUSE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (stamp.is_file() and stamp.read_text().strip() == want):
            _download(requirements, stamp, want)
    return WHEELHOUSE


_WHEELHOUSE_THREADS = threading.Lock()


def _download(requirements: Path, stamp: Path, want: str) -> None:
    for old in WHEELHOUSE.glob("*.whl"):
        old.unlink()
    log(f"downloading wheels for {requirements.relative_to(ROOT)} into {WHEELHOUSE.relative_to(ROOT)}/")
    platforms = [arg for p in ("manylinux_2_36_x86_64", "manylinux_2_28_x86_64", "manylinux2014_x86_64",
                               "linux_x86_64") for arg in ("--platform", p)]
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
                           "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311", *platforms,
                           "-r", str(requirements), "-d", str(WHEELHOUSE)],
                          capture_output=True, text=True, env={**os.environ, "PIP_NO_WARN_SCRIPT_LOCATION": "1"})
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if "ERROR" in line] or proc.stderr.splitlines()[-3:]
        raise ImageError(f"pip download for the service image failed: {' '.join(errors)}; the host needs "
                         f"the package index (or a pip find-links holding these wheels)")
    stamp.write_text(want + "\n")
