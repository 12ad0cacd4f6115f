"""The Open Inference Protocol over gRPC (``inference.GRPCInferenceService``), next to REST.

The same process and event loop (``grpc.aio``), models, cache, auth, limits, metrics and prediction
log as ``/api/v1`` and ``/v2``; listens on PREDICTION_GRPC_PORT (0: off).

- ``open_inference_grpc.proto``: the protocol, vendored unchanged from kserve/open-inference-protocol
  (``specification/protocol/open_inference_grpc.proto`` at commit d49cc23, Apache-2.0);
  ``open_inference_grpc.protoset``: its compiled descriptor (``make grpc-protoset``).
- ``messages.py``: the message classes, from the protoset.
- ``handlers.py``: the six RPCs, on the ``/v2`` routes' path (prediction.py, v2/).
- ``server.py``: the listener, and per call metrics, errors as gRPC statuses, limit, auth, timeout.
"""
