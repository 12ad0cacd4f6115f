"""testinfra on every container of the dev and prod stacks, as an operator runs it:

    pytest tests/host --hosts=docker://<container> --role=<part> --inventory=inventories/<stack>

each with the part its ``com.prediction.component`` label names; none may skip a check of its part."""
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from stack_emulator.stack import ROOT

sys.path.insert(0, str(ROOT / "tests/host"))
from host_expectations import CONTAINER_ROLES  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(params=["dev", "prod"])
def stack(request, stacks):
    return stacks(request.param)


def test_testinfra_passes_on_every_container_with_no_skips(stack, tmp_path):
    containers = [c for c in stack.docker.containers.list(filters={"label": f"com.prediction.stack={stack.stack}"})
                  if c.name.startswith(f"{stack.prefix}-")]
    parts = {c.name: c.labels.get("com.prediction.component") for c in containers}
    unchecked = {name: part for name, part in parts.items() if part not in CONTAINER_ROLES}
    assert not unchecked, f"running containers with no testinfra checks for their part: {unchecked}"
    assert set(parts.values()) == set(CONTAINER_ROLES), f"parts running: {sorted(set(parts.values()))}"
    report = []
    for name, part in sorted(parts.items()):
        xml = tmp_path / f"{name}.xml"
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", str(ROOT / "tests/host"),
             f"--hosts=docker://{name}", f"--role={part}", f"--inventory={ROOT / 'inventories' / stack.stack}",
             f"--junitxml={xml}"],
            cwd=ROOT, env={**os.environ, "STACK_PREFIX": stack.prefix}, capture_output=True, text=True, timeout=300)
        suite = ET.parse(xml).getroot().find("testsuite") if xml.exists() else None
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")} if suite is not None else {}
        report.append(f"{name} ({part}): {counts}")
        assert proc.returncode == 0, f"testinfra on {name} ({part}):\n{proc.stdout[-4000:]}{proc.stderr[-2000:]}"
        assert counts["tests"] > 0 and counts["skipped"] == 0, f"{name} ({part}): {counts}"
    print(f"\n[testinfra] {stack.stack}:\n  " + "\n  ".join(report))
