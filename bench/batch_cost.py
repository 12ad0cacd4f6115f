"""``python -m bench.batch_cost [MODEL_PATH]``: does adaptive batching pay for a model?

Loads every ``<model>/<version>`` under MODEL_PATH (default service/models) the way the service does
(one ONNX Runtime session, one intra-op thread, no spinning) and times one inference call of 1, 8,
32 and 64 rows — in process, no HTTP, the best of several repeats (a shared machine only ever makes
a call slower). Batching pays when a call of N rows costs much less than N calls of one row: the
"per row" column against the one-row call. It needs no server and no database.

For each version that batches it also prices the promise that a lone request is not delayed: one
request of one row to the idle model through its Batcher (what the service does with batching on)
against ``Model.predict`` (batching off), alternated call by call on one event loop; the median
difference is the latency batching adds to a request that finds the model idle.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
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


def lone_request_added_seconds(model, pairs: int = 2000) -> tuple[float, float, float]:
    """Median, 10th and 90th percentile of (Batcher.predict − Model.predict) for one row to the idle
    model, the two alternated (order swapped every pair) so that the machine's load hits both alike."""
    row = [[min(max(0.0, f.minimum), f.maximum) for f in model.features]]

    async def measure() -> list[float]:
        batcher, clock, diffs = model.batcher, time.perf_counter, []
        for i in range(pairs):
            t0 = clock()
            if i % 2:
                model.predict(row)
                t1 = clock()
                await batcher.predict(row)
                t2 = clock()
                diffs.append((t2 - t1) - (t1 - t0))
            else:
                await batcher.predict(row)
                t1 = clock()
                model.predict(row)
                t2 = clock()
                diffs.append((t1 - t0) - (t2 - t1))
            await asyncio.sleep(0)  # the batcher's end-of-call check runs: the model is idle again
            assert batcher.queued == 0
        return diffs

    diffs = sorted(asyncio.run(measure()))
    return statistics.median(diffs), diffs[len(diffs) // 10], diffs[len(diffs) * 9 // 10]


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
    print("\nlone request to the idle model, batching on − off (one row; median [p10–p90] of alternated calls):")
    for name, versions in sorted(registry.models.items()):
        for version, model in sorted(versions.items()):
            if model.batcher is not None:
                median, lo, hi = lone_request_added_seconds(model)
                print(f"{name + ' v' + version:<20} {median * 1e6:+7.1f} µs  [{lo * 1e6:+.1f} – {hi * 1e6:+.1f}]",
                      flush=True)
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
