"""scripts/install-timescaledb.sh (make timescaledb) and scripts/build-timescaledb.sh: what they do when
TimescaleDB is there, and the one-line notice (an error under CI=true) when it cannot be had."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.postgres import timescaledb_missing, timescaledb_unpatched

ROOT = Path(__file__).resolve().parents[2]


def run(script: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("CI", "TIMESCALEDB_SOURCE")}
    return subprocess.run([str(script), *args], capture_output=True, text=True, env={**base, **env}, timeout=120)


@pytest.fixture
def tree_pinning_another_version(tmp_path) -> Path:
    """A copy of scripts/ whose lock pins a TimescaleDB version nobody has, so nothing counts as installed."""
    (tmp_path / "scripts").mkdir()
    for name in ("install-timescaledb.sh", "build-timescaledb.sh", "fetch-source.sh"):
        shutil.copy2(ROOT / "scripts" / name, tmp_path / "scripts" / name)
    lock = (ROOT / "scripts" / "sources.lock").read_text()
    (tmp_path / "scripts" / "sources.lock").write_text(
        "\n".join("timescaledb 0.0.1 " + " ".join(line.split()[2:]) if line.startswith("timescaledb ") else line
                  for line in lock.splitlines()) + "\n")
    return tmp_path / "scripts" / "install-timescaledb.sh"


def test_nothing_to_do_when_the_pinned_version_is_installed():
    reason = timescaledb_missing() or timescaledb_unpatched()
    if reason:
        pytest.skip(reason)
    r = run(ROOT / "scripts" / "install-timescaledb.sh")
    assert r.returncode == 0 and r.stdout == "" and r.stderr == ""


def test_without_a_source_it_says_why_in_one_line_and_falls_back(tree_pinning_another_version, tmp_path):
    r = run(tree_pinning_another_version, TIMESCALEDB_SOURCE=str(tmp_path / "missing.tar.gz"))
    assert r.returncode == 0, r.stderr
    [line] = r.stdout.splitlines()
    assert "missing.tar.gz does not exist" in line and "TIMESCALEDB_SOURCE" in line
    assert "native partitioning" in line


def test_under_ci_a_missing_timescaledb_fails_the_run(tree_pinning_another_version, tmp_path):
    r = run(tree_pinning_another_version, CI="true", TIMESCALEDB_SOURCE=str(tmp_path / "missing.tar.gz"))
    assert r.returncode == 1
    assert "CI must test TimescaleDB" in r.stderr and "TIMESCALEDB_SOURCE" in r.stderr


def test_a_source_with_the_wrong_checksum_is_refused(tree_pinning_another_version, tmp_path):
    fake = tmp_path / "timescaledb-0.0.1.tar.gz"
    fake.write_bytes(b"not the release")
    r = run(tree_pinning_another_version, CI="true", TIMESCALEDB_SOURCE=str(fake))
    assert r.returncode == 1 and "not the pinned one" in r.stderr


def test_build_script_names_what_is_missing(tmp_path):
    r = run(ROOT / "scripts" / "build-timescaledb.sh", str(tmp_path / "nope.tar.gz"))
    assert r.returncode == 1 and "nope.tar.gz: no such file" in r.stderr
    r = run(ROOT / "scripts" / "build-timescaledb.sh", __file__, PG_CONFIG=str(tmp_path / "pg_config"))
    assert r.returncode == 1 and "pg_config not found" in r.stderr


def _release(tmp_path: Path, version: str, files: dict[str, str]) -> Path:
    """A stand-in release archive: one top folder holding version.config and ``files``."""
    top = tmp_path / f"timescaledb-{version}"
    (top / "version.config").parent.mkdir(parents=True)
    (top / "version.config").write_text(f"version = {version}\n")
    for name, text in files.items():
        (top / name).parent.mkdir(parents=True, exist_ok=True)
        (top / name).write_text(text)
    archive = tmp_path / f"{top.name}.tar.gz"
    subprocess.run(["tar", "-czf", str(archive), "-C", str(tmp_path), top.name], check=True)
    return archive


@pytest.fixture
def build_tools():
    missing = [t for t in ("cmake", "make", "cc", "patch") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"building TimescaleDB needs {missing} (make timescaledb installs them as root)")


def test_build_refuses_a_version_nobody_has_decided_the_patches_of(tmp_path, build_tools):
    r = run(ROOT / "scripts" / "build-timescaledb.sh", str(_release(tmp_path, "0.0.1", {})))
    assert r.returncode == 1
    assert "no patch folder" in r.stderr and "timescaledb-0.0.1" in r.stderr and "empty when none" in r.stderr


def test_build_stops_when_a_patch_does_not_apply(tmp_path, build_tools):
    from harness.postgres import PATCHES, TIMESCALEDB_VERSION

    [first, *_] = sorted(PATCHES.glob("*.patch"))
    r = run(ROOT / "scripts" / "build-timescaledb.sh",
            str(_release(tmp_path, TIMESCALEDB_VERSION, {"tsl/src/bgw_policy/job.c": "not the release's file\n"})))
    assert r.returncode == 1 and f"{first.name} does not apply to TimescaleDB {TIMESCALEDB_VERSION}" in r.stderr


def test_an_install_without_the_current_patches_is_rebuilt(tmp_path):
    """The pinned version is installed, but the tree now carries a patch it was not built with."""
    if timescaledb_missing():
        pytest.skip(timescaledb_missing())
    shutil.copytree(ROOT / "scripts", tmp_path / "scripts")
    from harness.postgres import TIMESCALEDB_VERSION

    (tmp_path / "scripts" / "patches" / f"timescaledb-{TIMESCALEDB_VERSION}" / "9999-new.patch").write_text("x\n")
    r = run(tmp_path / "scripts" / "install-timescaledb.sh", TIMESCALEDB_SOURCE=str(tmp_path / "missing.tar.gz"))
    assert r.returncode == 0, r.stderr
    [line] = r.stdout.splitlines()
    assert "missing.tar.gz does not exist" in line, line
