"""One venv per peer server (and one for the plot), made once from its pinned file and kept under var/.

A venv's folder is named by a hash of everything that decides its contents (the pinned file, the
pins taken from service/requirements.txt, the Python version), so a changed pin makes a new venv
and an unchanged one is reused: the first `make bench-peers` or smoke test installs from the
package index (minutes), later ones start at once. A venv is only used once its stamp file exists
(written last), so an interrupted install is redone, and a lock keeps two runs from building the
same venv at the same time. Older venvs of the same name are removed once a new one is ready.
"""
from __future__ import annotations

import fcntl
import hashlib
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = Path(__file__).resolve().parent / "requirements"
SERVICE_REQUIREMENTS = ROOT / "service" / "requirements.txt"
STAMP = ".bench-peers-ready"

# Which of the service's own pins each venv also gets (one source of truth for the ONNX runtime).
SERVICE_PINS = {
    "mlserver": ("onnxruntime", "numpy"),
    "bentoml": ("onnxruntime", "numpy"),
    "litserve": ("onnxruntime", "numpy"),
    "plot": ("numpy",),
}


class VenvError(RuntimeError):
    """A venv could not be made; the message carries pip's last lines and the log's path."""


def service_pins(names: tuple[str, ...]) -> list[str]:
    """``name==version`` lines for ``names`` as service/requirements.txt pins them."""
    pins = {}
    for line in SERVICE_REQUIREMENTS.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line.strip())
        if m:
            pins[m.group(1).lower()] = f"{m.group(1)}=={m.group(2)}"
    missing = [n for n in names if n not in pins]
    if missing:
        raise VenvError(f"{SERVICE_REQUIREMENTS} pins no {', '.join(missing)} (bench/peers/venvs.py needs them)")
    return [pins[n] for n in names]


def venv_key(name: str) -> str:
    """Hash of the pinned file, the service pins it takes and the Python version."""
    h = hashlib.sha256()
    h.update((REQUIREMENTS / f"{name}.txt").read_bytes())
    h.update("\n".join(service_pins(SERVICE_PINS[name])).encode())
    h.update(sys.version.split()[0].encode())
    return h.hexdigest()[:12]


def ensure(name: str, root: Path, log=print) -> Path:
    """The python of venv ``name`` under ``root``, made first if needed; VenvError if pip fails."""
    if name not in SERVICE_PINS:
        raise VenvError(f"no venv called {name!r} (known: {', '.join(SERVICE_PINS)})")
    root.mkdir(parents=True, exist_ok=True)
    folder = root / f"{name}-{venv_key(name)}"
    python = folder / "bin" / "python"
    with open(root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second run waits here, then finds the venv ready
        if not (folder / STAMP).is_file():
            _build(name, folder, log)
        for old in root.glob(f"{name}-*"):
            if old != folder and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
    return python


def ensure_all(names: list[str], root: Path, log=print) -> dict[str, Path]:
    """:func:`ensure` for several venvs at once (the installs wait on the network as much as on the CPU)."""
    with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
        futures = {name: pool.submit(ensure, name, root, log) for name in names}
        return {name: f.result() for name, f in futures.items()}


def _build(name: str, folder: Path, log) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    started = time.monotonic()
    log(f"==> making the {name} venv ({folder}) from bench/peers/requirements/{name}.txt — once per pin change")
    logfile = folder.parent / f"{folder.name}.pip.log"
    # The venv module of this interpreter creates the venv on its base Python, not on .venv.
    steps = [[sys.executable, "-m", "venv", str(folder)],
             [str(folder / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q",
              "-r", str(REQUIREMENTS / f"{name}.txt"), *service_pins(SERVICE_PINS[name])]]
    with open(logfile, "wb") as out:
        for argv in steps:
            proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT)
            if proc.returncode != 0:
                tail = "\n".join(logfile.read_text(errors="replace").splitlines()[-15:])
                raise VenvError(f"{' '.join(argv[:4])} … exited with {proc.returncode}; log {logfile}:\n{tail}")
    (folder / STAMP).write_text(f"made in {time.monotonic() - started:.0f} s\n")
    log(f"    {name} venv ready in {time.monotonic() - started:.0f} s")
