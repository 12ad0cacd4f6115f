"""The backup folder holds a recent dump that pg_restore can read and that matches its manifest."""
import json
import time

import pytest

from host_expectations import run_ok


@pytest.fixture(scope="module")
def newest_dump(host, expected) -> str:
    folder = expected["db_backup_dir"]
    db = expected["db_backup_database"]
    assert host.file(folder).is_directory, f"backup folder {folder} does not exist: run playbooks/backup.yml"
    out = host.run("ls -1t %s/%s_*.dump", folder, db)
    dumps = [line for line in out.stdout.splitlines() if line.strip()]
    assert dumps, f"no {db}_*.dump in {folder}: run playbooks/backup.yml"
    return dumps[0]


def test_newest_dump_is_recent(host, newest_dump, pytestconfig):
    max_age = pytestconfig.getoption("--backup-max-age-hours") * 3600
    age = time.time() - host.file(newest_dump).mtime.timestamp()
    assert age < max_age, f"newest dump {newest_dump} is {age / 3600:.1f} h old (limit {max_age / 3600:.0f} h)"


def test_newest_dump_matches_its_manifest(host, newest_dump):
    manifest_path = newest_dump[: -len(".dump")] + ".manifest.json"
    assert host.file(manifest_path).is_file, f"{newest_dump} has no manifest {manifest_path}"
    manifest = json.loads(host.file(manifest_path).content_string)
    sha = run_ok(host, "sha256sum %s", newest_dump).split()[0]
    assert sha == manifest["sha256"], f"{newest_dump}: sha256 {sha} differs from the manifest's {manifest['sha256']}"
    assert manifest["row_counts"], f"{manifest_path} lists no tables"


def test_newest_dump_is_readable_by_pg_restore(host, expected, newest_dump):
    listing = run_ok(host, "%s --list %s", expected["db_backup_pg_restore"], newest_dump)
    assert "TABLE DATA" in listing and "predictions" in listing, f"{newest_dump}: table of contents lacks the data"
