"""The GitHub workflow: valid against GitHub's workflow schema, and its tests run where the packages exist."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"


def test_there_are_workflows():
    assert WORKFLOWS, ".github/workflows/*.yml not found"


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_matches_githubs_schema(workflow):
    # check-jsonschema ships SchemaStore's github-workflow schema: no network needed.
    result = subprocess.run([str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.github-workflows", str(workflow)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def _test_job() -> dict:
    jobs = yaml.safe_load((ROOT / ".github/workflows/deploy.yml").read_text())["jobs"]
    return jobs["test"]


def test_tests_run_in_debian_12_through_the_ci_entry_point():
    job = _test_job()
    assert job["container"]["image"] == "debian:12", job.get("container")
    assert any(step.get("run", "").strip() == "bash .ci/run" for step in job["steps"]), job["steps"]
    # Nothing deploys unless the tests passed.
    assert yaml.safe_load((ROOT / ".github/workflows/deploy.yml").read_text())["jobs"]["deploy"]["needs"] == "test"


def _apt_packages() -> list[str]:
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    return re.search(r"^APT_PACKAGES\s*:=\s*(.+)$", text, re.M).group(1).split()


@pytest.mark.skipif(not shutil.which("apt-cache"), reason="needs a Debian machine with apt")
def test_every_system_package_exists_in_the_workflows_debian_release():
    os_release = dict(line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line)
    image_version = _test_job()["container"]["image"].split(":")[1]
    if os_release.get("ID") != "debian" or os_release.get("VERSION_ID", "").strip('"') != image_version:
        pytest.skip(f"this machine is not Debian {image_version}, the workflow's test container")
    missing = [p for p in _apt_packages()
               if subprocess.run(["apt-cache", "show", "--no-all-versions", p], capture_output=True).returncode != 0]
    assert not missing, f"not in Debian {image_version}: {missing}"
