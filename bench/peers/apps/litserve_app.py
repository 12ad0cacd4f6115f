"""LitServe 0.2.19 API around onnxruntime: a ``LitAPI`` with setup / decode / predict / encode.

As LitServe's quickstart writes one; one inference worker on the CPU (``devices=1,
workers_per_device=1``) and LitServe's default of one API server process in front of it, which
hands each request to the worker over a queue. The body is ``{"instances": [[f1, f2, f3, f4], ...]}``,
the same one BentoML gets. Run as ``python litserve_app.py --port N`` in LitServe's own venv; the
model folder comes from ``PEERS_MODEL_DIR`` (bench/peers/servers.py sets it).
"""
import argparse
import os

import litserve as ls

from onnx_model import OnnxModel


class IrisOnnx(ls.LitAPI):
    def setup(self, device):
        self.model = OnnxModel(os.environ["PEERS_MODEL_DIR"])

    def decode_request(self, request):
        return request["instances"]

    def predict(self, instances):
        return self.model.run(instances)

    def encode_response(self, output):
        labels, probs = output
        return {"predictions": labels, "probabilities": probs.tolist()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    server = ls.LitServer(IrisOnnx(), accelerator="cpu", devices=1, workers_per_device=1)
    server.run(host="127.0.0.1", port=args.port, generate_client_file=False)
