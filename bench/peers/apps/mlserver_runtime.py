"""MLServer 1.7.1 custom runtime around onnxruntime (MLServer ships no ONNX runtime package).

The smallest runtime MLServer's docs describe: an ``MLModel`` subclass whose ``load()`` creates
the session and whose ``predict()`` decodes the one input tensor with MLServer's NumpyCodec and
encodes the outputs with its codecs, as the service's /v2 answers them: ``label`` (BYTES) and
``probabilities`` (FP32). The model folder comes from ``parameters.uri`` in model-settings.json,
which bench/peers/servers.py writes. Runs in MLServer's own venv (bench/peers/requirements/mlserver.txt).
"""
from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.types import InferenceRequest, InferenceResponse

from onnx_model import OnnxModel


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        self._model = OnnxModel(self.settings.parameters.uri)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        labels, probs = self._model.run(x)
        return InferenceResponse(
            model_name=self.name, model_version=self.version, id=payload.id,
            outputs=[StringCodec.encode_output("label", labels), NumpyCodec.encode_output("probabilities", probs)])
