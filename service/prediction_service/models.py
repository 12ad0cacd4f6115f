"""Load ONNX models from ``<model_path>/<name>/<version>/{model.onnx,metadata.json}`` and run them.

Each version gets one ONNX Runtime session, created at start-up and reused by every request
(``run()`` is thread-safe and releases the GIL). One intra-op thread and no spinning: the service
runs one process per instance and several instances may share the host's cores.
A version that fails to load is reported by name (log, metric, /ready) and the others are served.
A version whose ``max_batch_size`` is above 1 gets a :class:`~.batching.Batcher` (adaptive batching).
"""
from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from . import metrics
from .config import MAX_BATCH_DELAY_US_LIMIT, MAX_BATCH_SIZE_LIMIT

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
FEATURE_TYPES = ("number", "integer")
KINDS = ("classifier", "regressor")
# Inputs are float32 tensors: a finite float64 beyond this would become inf inside the model.
FLOAT32_MAX = float(np.finfo(np.float32).max)


# A call of this many rows runs in a worker thread (ONNX Runtime releases the GIL) so the event loop
# keeps answering other requests; smaller ones run inline, where a thread hop costs more than it saves.
EXECUTOR_MIN_ROWS = 64


class ModelLoadError(Exception):
    """Why one model version could not be loaded (message names the file and the problem)."""


class NonFiniteOutput(Exception):
    """The model gave NaN or an infinity for some rows (inputs beyond what it can compute)."""

    def __init__(self, rows: list[int]):
        super().__init__(f"non-finite model output for rows {rows}")
        self.rows = rows


@dataclass(frozen=True, slots=True)
class Feature:
    name: str
    type: str  # "number" or "integer"
    # Accepted values; metadata may narrow them to the range the model was built for.
    minimum: float = -FLOAT32_MAX
    maximum: float = FLOAT32_MAX


@dataclass(slots=True)
class Model:
    """One loaded model version: metadata plus its ONNX Runtime session."""

    name: str
    version: str
    kind: str
    features: tuple[Feature, ...]
    labels: tuple[str, ...]
    cache: bool  # results are cached (in-process tier at least)
    shared_cache: bool  # ... and in Redis, shared by all replicas
    description: str
    is_default: bool
    session: ort.InferenceSession = field(repr=False)
    max_batch_size: int = 1  # rows per inference call under adaptive batching; 1 = off
    max_batch_delay_us: int = 0  # how long a queued batch may wait to fill up (batching.py)
    batcher: object = field(default=None, repr=False)  # batching.Batcher when max_batch_size > 1
    input_name: str = ""
    feature_index: dict[str, int] = field(default_factory=dict)
    bounds: tuple[tuple[float, float], ...] = ()  # (minimum, maximum) per feature, in feature order
    # Metric children bound once at load time (a .labels() lookup per request costs more).
    _inference_hist: object = field(default=None, repr=False)
    local_hits: object = field(default=None, repr=False)
    redis_hits: object = field(default=None, repr=False)
    misses: object = field(default=None, repr=False)

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    def describe(self) -> dict:
        """Public description (GET /api/v1/models)."""
        return {"version": self.version, "kind": self.kind, "description": self.description,
                "features": [{"name": f.name, "type": f.type, "minimum": f.minimum, "maximum": f.maximum}
                             for f in self.features],
                "labels": list(self.labels), "cache": self.cache,
                "cache_tier": "shared" if self.shared_cache else "local" if self.cache else "off",
                "max_batch_size": self.max_batch_size, "max_batch_delay_us": self.max_batch_delay_us}

    def predict(self, rows: list[list[float]]) -> list[dict]:
        """Run the model on validated feature rows; one result dict per row.

        Classifier result: ``{"label": str, "probabilities": {label: p}}``; regressor: ``{"value": float}``.
        Raises :class:`NonFiniteOutput` naming the rows the model has no finite output for.
        """
        results, bad = self.decode(self.run(np.asarray(rows, dtype=np.float32)), len(rows))
        if bad:
            raise NonFiniteOutput(bad)
        return results

    def run(self, x: np.ndarray) -> list:
        """ONNX Runtime on a float32 ``[n, features]`` array: the raw outputs. Safe in a worker thread."""
        start = time.perf_counter()  # not Histogram.time(): its context manager costs more than this
        outputs = self.session.run(None, {self.input_name: x})
        self._inference_hist.observe(time.perf_counter() - start)
        return outputs

    def decode(self, outputs: list, n: int) -> tuple[list, list[int]]:
        """The result dict of each of the ``n`` rows from :meth:`run`'s outputs, and the rows the model
        gave no finite output for (their result is None): one row's overflow is that row's alone."""
        if self.kind == "classifier":
            label_idx, proba = outputs[0], outputs[1]
            bad = _non_finite_rows(proba)
            labels = self.labels
            n_labels = len(labels)
            out = []
            # float32 → Python float rounded to 6 places gives short, stable JSON numbers. round()
            # over .tolist() is cheaper than np.round on a float64 copy for the usual few rows.
            for i, p in zip(label_idx.tolist(), proba.tolist()):
                label = labels[i] if isinstance(i, int) and 0 <= i < n_labels else str(i)
                out.append({"label": label, "probabilities": {k: round(v, 6) for k, v in zip(labels, p)}})
        else:
            values = outputs[0].reshape(n, -1)[:, 0]
            bad = _non_finite_rows(values)
            out = [{"value": float(str(v))} for v in values]
        for i in bad:
            out[i] = None
        return out, bad


def _non_finite_rows(array: np.ndarray) -> list[int]:
    # A model fed values far outside its training range can overflow float32 (NaN, inf): that is
    # no prediction, and JSON would carry it as null. One vectorised test costs ~1 µs per call.
    # count_nonzero rather than .all(): the same test without .all()'s Python wrapper (≈ 1 µs less).
    if np.count_nonzero(np.isfinite(array)) == array.size:
        return []
    bad = ~np.isfinite(array.reshape(array.shape[0], -1)).all(axis=1)
    return np.flatnonzero(bad).tolist()


@dataclass
class ModelRegistry:
    """Every loaded model version, by name and version, plus the versions that failed to load."""

    models: dict[str, dict[str, Model]] = field(default_factory=dict)
    default_versions: dict[str, str] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.models.values())

    def get(self, name: str, version: str | None) -> Model | None:
        versions = self.models.get(name)
        if versions is None:
            return None
        return versions.get(version if version is not None else self.default_versions[name])

    def describe(self) -> list[dict]:
        return [{"name": name, "default_version": self.default_versions[name],
                 "versions": [m.describe() for m in versions.values()]}
                for name, versions in sorted(self.models.items())]


def _version_key(version: str):
    # Numeric versions sort numerically ("10" after "9"), others lexically after them.
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Busy-waiting threads would steal CPU from the event loop and from neighbour instances.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _read_metadata(folder: Path) -> dict:
    name, version = folder.parent.name, folder.name
    meta_path = folder / "metadata.json"
    if not meta_path.is_file():
        raise ModelLoadError(f"{meta_path} is missing")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{meta_path} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise ModelLoadError(f"{meta_path} must hold a JSON object")
    if str(meta.get("name", name)) != name or str(meta.get("version", version)) != version:
        raise ModelLoadError(f"{meta_path} says {meta.get('name')}/{meta.get('version')} "
                             f"but lives in folder {name}/{version}")
    if meta.get("kind") not in KINDS:
        raise ModelLoadError(f"{meta_path}: kind must be one of {', '.join(KINDS)}, got {meta.get('kind')!r}")
    labels = meta.get("labels") or []
    if meta["kind"] == "classifier" and (not isinstance(labels, list) or not labels):
        raise ModelLoadError(f"{meta_path}: a classifier needs its output labels")
    if not isinstance(meta.get("default", False), bool):
        raise ModelLoadError(f"{meta_path}: default must be true or false")
    return meta


def _bound(f: dict, key: str, default: float, where: str) -> float:
    value = f.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not is_finite_float32(float(value)):
        raise ModelLoadError(f"{where}: feature {f['name']!r}: {key} must be a number within float32 range")
    return float(value)


def _parse_features(raw_features, where: str) -> tuple[Feature, ...]:
    """``[{name, type: number|integer, minimum?, maximum?}]`` → Features; ModelLoadError if malformed."""
    if not isinstance(raw_features, list) or not raw_features:
        raise ModelLoadError(f"{where}: features must be a non-empty list of {{name, type}}")
    features = []
    for f in raw_features:
        if not isinstance(f, dict) or not isinstance(f.get("name"), str) or f.get("type", "number") not in FEATURE_TYPES:
            raise ModelLoadError(f"{where}: bad feature {f!r} (need name and type number|integer)")
        minimum, maximum = _bound(f, "minimum", -FLOAT32_MAX, where), _bound(f, "maximum", FLOAT32_MAX, where)
        if minimum >= maximum:
            raise ModelLoadError(f"{where}: feature {f['name']!r}: minimum must be below maximum")
        features.append(Feature(f["name"], f.get("type", "number"), minimum, maximum))
    names = [f.name for f in features]
    if len(set(names)) != len(names):
        raise ModelLoadError(f"{where}: duplicate feature names")
    if "instances" in names:
        raise ModelLoadError(f"{where}: 'instances' is reserved for batch requests, rename that feature")
    return tuple(features)


def _cache_mode(meta: dict, where: str) -> str:
    # "shared": local LRU + Redis (true means this); "local": LRU only — for models cheaper to
    # evaluate than a Redis round trip; "off" (or false): every request runs the model.
    cache_mode = meta.get("cache", True)
    if cache_mode is True or cache_mode is False:
        cache_mode = "shared" if cache_mode else "off"
    if not isinstance(cache_mode, str) or cache_mode not in ("shared", "local", "off"):
        raise ModelLoadError(f"{where}: cache must be true, false, \"shared\", \"local\" or \"off\"")
    return cache_mode


def _batch_setting(meta: dict, key: str, default: int, lowest: int, highest: int, where: str) -> int:
    value = meta.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value <= highest:
        raise ModelLoadError(f"{where}: {key} must be an integer from {lowest} to {highest}, got {value!r}")
    return value


def _open_session(onnx_path: Path, kind: str, n_features: int) -> ort.InferenceSession:
    """The ONNX Runtime session, checked to take one float tensor of ``n_features`` (and, for a
    classifier, to output labels and a float probability tensor)."""
    if not onnx_path.is_file():
        raise ModelLoadError(f"{onnx_path} is missing")
    try:
        session = _session(onnx_path)
    except Exception as exc:  # onnxruntime raises several types for a corrupt or incompatible file
        raise ModelLoadError(f"{onnx_path} cannot be loaded by ONNX Runtime: {str(exc).splitlines()[0]}") from None
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].type != "tensor(float)":
        raise ModelLoadError(f"{onnx_path}: expected one float tensor input, got "
                             f"{[(i.name, i.type) for i in inputs]}")
    width = inputs[0].shape[-1] if inputs[0].shape else None
    if isinstance(width, int) and width != n_features:
        raise ModelLoadError(f"{onnx_path} takes {width} features but metadata lists {n_features}")
    outputs = session.get_outputs()
    if kind == "classifier" and len(outputs) < 2:
        raise ModelLoadError(f"{onnx_path}: a classifier must output label and probabilities "
                             "(convert with zipmap off)")
    if kind == "classifier" and outputs[1].type != "tensor(float)":
        raise ModelLoadError(f"{onnx_path}: probabilities must be a float tensor (convert with zipmap off)")
    return session


def load_model(folder: Path, max_batch_size: int = 1, max_batch_delay_us: int = 0) -> Model:
    """Load one ``<name>/<version>`` folder; raise ModelLoadError saying what is wrong.

    ``max_batch_size`` / ``max_batch_delay_us``: the service-wide defaults of the metadata fields.
    """
    from .batching import Batcher  # batching.py builds on Model: imported here, not at the top

    name, version = folder.parent.name, folder.name
    meta = _read_metadata(folder)
    where = str(folder / "metadata.json")
    features = _parse_features(meta.get("features"), where)
    cache_mode = _cache_mode(meta, where)
    batch_size = _batch_setting(meta, "max_batch_size", max_batch_size, 1, MAX_BATCH_SIZE_LIMIT, where)
    batch_delay = _batch_setting(meta, "max_batch_delay_us", max_batch_delay_us, 0, MAX_BATCH_DELAY_US_LIMIT, where)
    session = _open_session(folder / "model.onnx", meta["kind"], len(features))
    model = Model(name=name, version=version, kind=meta["kind"], features=features,
                  labels=tuple(str(label) for label in meta.get("labels") or []), cache=cache_mode != "off",
                  shared_cache=cache_mode == "shared",
                  description=str(meta.get("description", "")),
                  is_default=meta.get("default", False), session=session,
                  max_batch_size=batch_size, max_batch_delay_us=batch_delay,
                  input_name=session.get_inputs()[0].name,
                  feature_index={f.name: i for i, f in enumerate(features)},
                  bounds=tuple((f.minimum, f.maximum) for f in features))
    model._inference_hist = metrics.inference_duration_seconds.labels(model=name, version=version)
    model.local_hits = metrics.cache_hits_total.labels(model=name, tier="local")
    model.redis_hits = metrics.cache_hits_total.labels(model=name, tier="redis")
    model.misses = metrics.cache_misses_total.labels(model=name)
    # A warm-up call: the first run() allocates; do it now rather than in a user's request. The
    # second one's time is the batcher's first estimate of what a call of one row costs.
    row = [[min(max(0.0, f.minimum), f.maximum) for f in features]]
    model.predict(row)
    if batch_size > 1:
        start = time.perf_counter()
        model.predict(row)
        model.batcher = Batcher(model, one_row_seconds=time.perf_counter() - start)
    return model


def load_models(model_path: Path, max_batch_size: int = 1, max_batch_delay_us: int = 0) -> ModelRegistry:
    """Load every ``<name>/<version>`` folder under ``model_path``; failures are logged and kept.

    ``max_batch_size`` / ``max_batch_delay_us``: the defaults of versions whose metadata sets none.
    """
    registry = ModelRegistry()
    folders = sorted(p for p in model_path.glob("*/*") if p.is_dir() and not p.name.startswith("."))
    for folder in folders:
        name, version = folder.parent.name, folder.name
        if name.startswith("."):
            continue
        try:
            if not NAME_RE.match(name) or not NAME_RE.match(version):
                raise ModelLoadError(f"folder {name}/{version}: names may use letters, digits, '_', '.', '-'")
            model = load_model(folder, max_batch_size, max_batch_delay_us)
        except ModelLoadError as exc:
            log.error("model %s version %s not loaded: %s", name, version, exc)
            metrics.model_load_failures_total.labels(model=name).inc()
            registry.failures.append({"model": name, "version": version, "error": str(exc)})
            continue
        registry.models.setdefault(name, {})[version] = model
        log.info("model %s version %s loaded (%s, %d features, cache %s, batching %s)", name, version, model.kind,
                 len(model.features), model.describe()["cache_tier"],
                 f"up to {model.max_batch_size} rows" if model.batcher is not None else "off")
    for name, versions in registry.models.items():
        # The version marked "default": true in its metadata, else the highest version.
        marked = [v for v, m in versions.items() if m.is_default]
        registry.default_versions[name] = max(marked or versions, key=_version_key)
    metrics.models_loaded.set(registry.count)
    return registry


def is_finite_float32(value: float) -> bool:
    return math.isfinite(value) and -FLOAT32_MAX <= value <= FLOAT32_MAX
