"""The Open Inference Protocol (KServe V2 REST), served next to ``/api/v1`` on the same machinery.

- ``tensors.py``: an inference request (JSON, or JSON + Triton binary tensor data) → validated
  feature rows; results → the inference response.
- ``handlers.py``: the ``/v2`` routes (health, server and model metadata, model ready, infer).
- ``openapi.py``: their part of the OpenAPI document.

Errors on ``/v2`` paths leave as ``{"error": "<message>"}`` (errors.py), input errors as 400.
"""
