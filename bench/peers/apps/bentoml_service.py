"""BentoML 1.4.40 service around onnxruntime: one ``@bentoml.service`` class, one ``@bentoml.api``.

Written as BentoML's quickstart writes a service (typed parameters: BentoML builds the JSON schema
and validates the body with pydantic; a sync API method runs in BentoML's thread pool). The body is
``{"instances": [[f1, f2, f3, f4], ...]}``, the same one LitServe gets. ``workers=1``: one worker
process. Run by ``bentoml serve bentoml_service:IrisOnnx`` in BentoML's own venv; the model folder
comes from ``PEERS_MODEL_DIR`` (bench/peers/servers.py sets it).
"""
import os

import bentoml

from onnx_model import OnnxModel


@bentoml.service(workers=1)
class IrisOnnx:
    def __init__(self) -> None:
        self.model = OnnxModel(os.environ["PEERS_MODEL_DIR"])

    @bentoml.api
    def predict(self, instances: list[list[float]]) -> dict:
        labels, probs = self.model.run(instances)
        return {"predictions": labels, "probabilities": probs.tolist()}
