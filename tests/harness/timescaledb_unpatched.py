"""A PostgreSQL server that runs TimescaleDB's release as published, without scripts/patches, so a test
can show what a patch fixes.

The patches touch TimescaleDB's tsl module only. Its unpatched build comes from the project's own
scripts/build-timescaledb.sh (``TIMESCALEDB_UNPATCHED=1``), built once and kept in
var/cache/timescaledb-unpatched/ (a few minutes on 2 cores). The server is a copy of this host's
``postgres`` binary in a folder laid out like the installation: PostgreSQL finds its library and
share folders relative to its own binary, so the copy loads the installed libraries (symlinked) except
the unpatched module put in their place, and the system installation is never touched.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .postgres import PG_BIN, ROOT, TIMESCALEDB_VERSION

CACHE = ROOT / "var" / "cache" / "timescaledb-unpatched"
TSL_MODULE = f"timescaledb-tsl-{TIMESCALEDB_VERSION}.so"


class UnavailableError(RuntimeError):
    """The unpatched build cannot be had here; the message says why (one line)."""


def _pg_config(option: str) -> Path:
    return Path(subprocess.run([str(PG_BIN / "pg_config"), option], capture_output=True, text=True,
                               check=True).stdout.strip())


def unpatched_tsl_module() -> Path:
    """The tsl module of the published release, built for this PostgreSQL (cached)."""
    # Keyed by what the build depends on: the pinned archive (its sha256 in the lock), the build script
    # and this PostgreSQL; a cached build needs no archive.
    pinned = next(line for line in (ROOT / "scripts/sources.lock").read_text().splitlines()
                  if line.startswith("timescaledb "))
    version = subprocess.run([str(PG_BIN / "postgres"), "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256((pinned + version).encode() + (ROOT / "scripts/build-timescaledb.sh").read_bytes()
                         ).hexdigest()[:16]
    cached = CACHE / key / TSL_MODULE
    if cached.is_file():
        return cached
    fetched = subprocess.run([str(ROOT / "scripts/fetch-source.sh"), "timescaledb"], capture_output=True, text=True)
    if fetched.returncode != 0:
        raise UnavailableError(fetched.stderr.strip())
    archive = Path(fetched.stdout.strip())
    with tempfile.TemporaryDirectory(prefix="timescaledb-unpatched-") as tmp:
        env = {**os.environ, "TIMESCALEDB_UNPATCHED": "1", "DESTDIR": f"{tmp}/root",
               "PG_CONFIG": str(PG_BIN / "pg_config")}
        build = subprocess.run([str(ROOT / "scripts/build-timescaledb.sh"), str(archive)], env=env,
                               capture_output=True, text=True, timeout=1200)
        if build.returncode != 0:
            raise UnavailableError(build.stderr.strip().splitlines()[-1] if build.stderr.strip()
                                   else "scripts/build-timescaledb.sh failed")
        built = Path(f"{tmp}/root{_pg_config('--pkglibdir')}") / TSL_MODULE
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(built, cached.with_suffix(".part"))
        cached.with_suffix(".part").rename(cached)
    return cached


def server_with_module(tsl_module: Path, top: Path) -> Path:
    """The path of a ``postgres`` under ``top`` (an empty folder the postgres user may enter) that loads
    ``tsl_module`` instead of the installed one."""
    bindir, libdir, sharedir = PG_BIN, _pg_config("--pkglibdir"), _pg_config("--sharedir")
    for path in (bindir, libdir, sharedir):
        assert path.is_absolute()
    copy_bin, copy_lib, copy_share = (top / p.relative_to("/") for p in (bindir, libdir, sharedir))
    for folder in (copy_bin, copy_lib, copy_share.parent):
        folder.mkdir(parents=True, exist_ok=True)
    for d in top.rglob("*"):
        d.chmod(0o755)
    # A real copy: PostgreSQL resolves symlinks to its own binary before locating its folders.
    shutil.copy2(bindir / "postgres", copy_bin / "postgres")
    for entry in libdir.iterdir():
        if entry.name != TSL_MODULE:
            (copy_lib / entry.name).symlink_to(entry)
    shutil.copy2(tsl_module, copy_lib / TSL_MODULE)
    (copy_lib / TSL_MODULE).chmod(0o755)
    copy_share.symlink_to(sharedir)
    return copy_bin / "postgres"
