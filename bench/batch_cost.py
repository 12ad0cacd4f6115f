"""``python -m bench.batch_cost [MODEL_PATH]``: does adaptive batching pay for a model?

Loads every ``<model>/<version>`` under MODEL_PATH (default service/models) the way the service does
(one ONNX Runtime session, one intra-op thread, no spinning) and times one inference call of 1, 8,
32 and 64 rows — in process, no HTTP, the best of several repeats (a shared machine only ever makes
a call slower). Batching pays when a call of N rows costs much less than N calls of one row: the
"per row" column against the one-row call. It needs no server and no database.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "service"))

SIZES = (1, 8, 32, 64)


def best_call_seconds(model, rows: int, repeats: int, calls: int) -> float:
    """The fastest mean time of ``calls`` consecutive calls of ``rows`` rows, over ``repeats`` tries."""
    rng = np.random.default_rng(rows)
    lo = np.array([max(f.minimum, 0.0) for f in model.features])
    hi = np.array([min(f.maximum, lo_ + 8.0) for f, lo_ in zip(model.features, lo)])
    x = (lo + (hi - lo) * rng.random((rows, len(model.features)))).astype(np.float32)
    model.run(x)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            model.run(x)
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.batch_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("model_path", nargs="?", type=Path, default=ROOT / "service" / "models")
    p.add_argument("--repeats", type=int, default=7, help="tries per size; the fastest counts (default 7)")
    args = p.parse_args(argv)
    from prediction_service.models import load_models

    registry = load_models(args.model_path)
    if not registry.count:
        print(f"no model loaded from {args.model_path}: {registry.failures}", file=sys.stderr)
        return 1
    header = "model version        nodes  max_batch_size  " + "  ".join(f"{n:>3} rows: µs/call (µs/row)" for n in SIZES)
    print(header)
    for name, versions in sorted(registry.models.items()):
        for version, model in sorted(versions.items()):
            nodes = _node_count(args.model_path / name / version / "model.onnx")
            cells = []
            for n in SIZES:
                secs = best_call_seconds(model, n, args.repeats, calls=max(5, 200 // n))
                cells.append(f"{secs * 1e6:10.0f} ({secs * 1e6 / n:7.1f})")
            print(f"{name + ' v' + version:<20} {nodes:>6}  {model.max_batch_size:>14}  " + "  ".join(
                f"{c:>24}" for c in cells), flush=True)
    return 0


def _node_count(path: Path) -> int:
    """ONNX nodes in the model file (each call walks them all), or 0 without the onnx package."""
    try:
        import onnx
    except ImportError:  # a development dependency (make model); the service does not need it
        return 0
    return len(onnx.load(str(path)).graph.node)


if __name__ == "__main__":
    sys.exit(main())
