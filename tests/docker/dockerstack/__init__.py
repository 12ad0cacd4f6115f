"""Run a Pulumi stack of this repository on a real Docker engine without the Pulumi CLI (tests, trials)."""
import sys
from pathlib import Path

# The program runner and the resource graph (pulumi_graph.py) live with the Pulumi tests; stack.py
# and engine.py both use them.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "infra"))
