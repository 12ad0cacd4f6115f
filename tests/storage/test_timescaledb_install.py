"""scripts/install-timescaledb.sh (make timescaledb) and scripts/build-timescaledb.sh: what they do when
TimescaleDB is there, and the one-line notice (an error under CI=true) when it cannot be had."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.postgres import timescaledb_missing

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
    if timescaledb_missing():
        pytest.skip(timescaledb_missing())
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
