"""The stack emulator's own tests: plans only, no engine (helpers in plan_support.py)."""
import pytest

from plan_support import state_of


@pytest.fixture
def tmp_state(tmp_path):
    return lambda g, **changes: state_of(g, tmp_path, **changes)
