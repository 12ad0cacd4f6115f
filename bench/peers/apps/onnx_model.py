"""The one ONNX Runtime session every server in `make bench-peers` runs, built the same way for all.

Imported by the baseline (in .venv) and by the peer apps (each in its own venv), so it needs
numpy and onnxruntime only. The options are the service's (service/prediction_service/models.py):
one intra-op thread, sequential, no spinning — so the servers differ in what they do around the
model, never in how the model runs.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort


class OnnxModel:
    """One model version folder (``model.onnx`` + ``metadata.json``): its session, features, labels."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        meta = json.loads((folder / "metadata.json").read_text())
        self.name = str(meta["name"])
        self.version = str(meta["version"])
        self.features = [f["name"] for f in meta["features"]]
        self.labels = list(meta.get("labels") or [])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(folder / "model.onnx"), sess_options=opts,
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def run(self, rows) -> tuple[list[str], np.ndarray]:
        """Rows of feature values ([N][n_features]) → (label names, [N][n_labels] probabilities)."""
        x = np.asarray(rows, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != len(self.features):
            raise ValueError(f"expected rows of {len(self.features)} numbers ({', '.join(self.features)}), "
                             f"got shape {list(x.shape)}")
        label_idx, probs = self.session.run(None, {self.input_name: x})
        return [self.labels[int(i)] for i in label_idx], probs
