"""Fixtures for the ops tests: a localhost inventory and a playbook runner."""
import pytest

from harness.ansible import run_playbook, write_inventory


@pytest.fixture
def inventory(tmp_path):
    return write_inventory(tmp_path / "hosts.yml")


@pytest.fixture
def playbook(inventory):
    """``playbook("backup.yml", {vars}, check=False)`` -> PlaybookRun (rc, stats, changed, failure_messages())."""
    def run(name, extra_vars=None, **kw):
        return run_playbook(name, inventory, extra_vars, **kw)
    return run
