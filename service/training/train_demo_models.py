"""Train the demo models the service ships with, reproducibly, from data sets bundled in scikit-learn.

Writes ``<out>/<name>/<version>/{model.onnx,metadata.json}`` — the layout the service loads from
``PREDICTION_MODEL_PATH``:

- ``iris/1``: 50-tree RandomForestClassifier, the default version (the benchmark's reference
  model), cache ``local`` (in-process tier only), adaptive batching up to 32 rows;
- ``iris/2``: LogisticRegression on the same features (``?version=2``), cache ``shared``
  (in-process tier in front of Redis), no batching;
- ``iris_ensemble/1``: a bagged ensemble of 128 small neural networks on the iris features — a
  model whose inference dominates a request (≈ 1,500 ONNX nodes, each call pays for every one of
  them) and so gains most from adaptive batching (up to 64 rows);
- ``diabetes/1``: Ridge regressor, cache ``off`` (every request runs the model).

Fixed seeds make every run produce the same predictions. Training tools (scikit-learn, skl2onnx)
are development dependencies only; the service image never installs them.

Usage: ``python service/training/train_demo_models.py --out service/models``
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

SEED = 20240611
ENSEMBLE_SIZE = 128


def _features(names: list[str], minimum: float, maximum: float) -> list[dict]:
    # The declared range is what the service accepts (422 outside) and what its OpenAPI promises:
    # far outside it a linear model overflows float32 and has no answer to give.
    return [{"name": n, "type": "number", "minimum": minimum, "maximum": maximum} for n in names]


def _to_onnx(model, n_features: int, classifier: bool) -> bytes:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    # zipmap off: probabilities come back as one float tensor, not a list of dicts (much faster to read).
    options = {id(model): {"zipmap": False}} if classifier else None
    onx = to_onnx(model, initial_types=[("input", FloatTensorType([None, n_features]))],
                  options=options, target_opset=17)
    return onx.SerializeToString()


def _write(out: Path, meta: dict, onnx_bytes: bytes) -> Path:
    folder = out / meta["name"] / meta["version"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(onnx_bytes)
    (folder / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    return folder


def train(out: Path) -> list[Path]:
    """Train every demo model into ``out``; returns the written model folders."""
    from threadpoolctl import threadpool_limits  # installed with scikit-learn

    # One BLAS thread: the same floating-point sums on every machine (reproducible files), and no
    # oversubscription of a shared host by threads that small matrices cannot use anyway.
    with threadpool_limits(limits=1):
        return _train(out)


def _train(out: Path) -> list[Path]:
    import numpy as np
    from sklearn.datasets import load_diabetes, load_iris
    from sklearn.ensemble import BaggingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    written = []
    iris = load_iris()
    iris_names = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    x_iris = iris.data.astype(np.float32)
    labels = [str(n) for n in iris.target_names]

    forest = RandomForestClassifier(n_estimators=50, max_depth=6, random_state=SEED, n_jobs=1)
    forest.fit(x_iris, iris.target)
    written.append(_write(out, {
        "name": "iris", "version": "1", "kind": "classifier",
        "description": "Iris species, 50-tree random forest (scikit-learn iris data set)",
        # Lengths in centimetres (the data set's are 0.1-7.9): 0 to 100 admits any real flower.
        "features": _features(iris_names, 0, 100), "labels": labels,
        # Measured here: the forest runs in ~16 µs, a Redis read costs ~80-110 µs of client CPU, so
        # consulting Redis on a local miss would only slow this model down: in-process tier only.
        "cache": "local",
        # The reference model: requests without ?version= get it; v2 is served on request.
        "default": True,
        # Adaptive batching: concurrent misses run as one call. A call costs ~10 µs, a row in a
        # batch ~1 µs, and a lone request does not wait (docs/performance.md, issue 19).
        "max_batch_size": 32,
        "training": {"algorithm": "RandomForestClassifier", "n_estimators": 50, "seed": SEED,
                     "train_accuracy": round(float(forest.score(x_iris, iris.target)), 4)},
    }, _to_onnx(forest, len(iris_names), classifier=True)))

    logreg = LogisticRegression(max_iter=1000, random_state=SEED)
    logreg.fit(x_iris, iris.target)
    written.append(_write(out, {
        "name": "iris", "version": "2", "kind": "classifier",
        "description": "Iris species, logistic regression (scikit-learn iris data set)",
        # Both tiers (local + Redis shared by replicas): demonstrates the shared cache.
        "features": _features(iris_names, 0, 100), "labels": labels, "cache": "shared",
        "training": {"algorithm": "LogisticRegression", "seed": SEED,
                     "train_accuracy": round(float(logreg.score(x_iris, iris.target)), 4)},
    }, _to_onnx(logreg, len(iris_names), classifier=True)))

    # 128 networks with one hidden layer of 16 units, each fitted to a bootstrap sample of the data;
    # their probabilities are averaged. In ONNX every network is its own dozen nodes, and a call
    # walks all ~1,500 of them: ≈ 0.2-0.4 ms for one row, but only ≈ 10-20 µs more per extra row in
    # the same call. That fixed cost per call is what batching shares out.
    ensemble = BaggingClassifier(MLPClassifier(hidden_layer_sizes=(16,), solver="lbfgs", max_iter=200,
                                               random_state=SEED),
                                 n_estimators=ENSEMBLE_SIZE, random_state=SEED)
    with warnings.catch_warnings():  # a few members stop at max_iter; the ensemble is what counts
        warnings.simplefilter("ignore", ConvergenceWarning)
        ensemble.fit(x_iris, iris.target)
    written.append(_write(out, {
        "name": "iris_ensemble", "version": "1", "kind": "classifier",
        "description": f"Iris species, a bagged ensemble of {ENSEMBLE_SIZE} small neural networks "
                       "(deliberately heavy: the adaptive-batching demo)",
        "features": _features(iris_names, 0, 100), "labels": labels,
        # Its inference costs more than a Redis read, but in a batch a row costs less: in-process only.
        "cache": "local",
        "max_batch_size": 64,
        "training": {"algorithm": "BaggingClassifier(MLPClassifier)", "n_estimators": ENSEMBLE_SIZE,
                     "hidden_layer_sizes": [16], "seed": SEED,
                     "train_accuracy": round(float(ensemble.score(x_iris, iris.target)), 4)},
    }, _to_onnx(ensemble, len(iris_names), classifier=True)))

    diabetes = load_diabetes()
    x_diab = diabetes.data.astype(np.float32)
    ridge = Ridge(alpha=0.5, random_state=SEED)
    ridge.fit(x_diab, diabetes.target)
    written.append(_write(out, {
        "name": "diabetes", "version": "1", "kind": "regressor",
        "description": "Diabetes disease progression after one year, ridge regression "
                       "(scikit-learn diabetes data set; features are standardised)",
        # Standardised so that each column's squares sum to 1: every value lies within [-1, 1].
        "features": _features(list(diabetes.feature_names), -1, 1), "labels": [],
        # A linear model costs less to evaluate than a cache lookup: serve it uncached.
        "cache": "off",
        "training": {"algorithm": "Ridge", "alpha": 0.5, "seed": SEED,
                     "train_r2": round(float(ridge.score(x_diab, diabetes.target)), 4)},
    }, _to_onnx(ridge, x_diab.shape[1], classifier=False)))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="model folder (PREDICTION_MODEL_PATH)")
    args = parser.parse_args(argv)
    for folder in train(args.out):
        print(f"wrote {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
