"""The OpenAPI 3 document served at ``/api/openapi.json``, built from the loaded models.

A test compares its paths and methods with the application's routes, so the two cannot drift.
"""
from __future__ import annotations

from . import __version__
from .models import ModelRegistry

PREDICT_PATH = "/api/v1/models/{name}/predict"


def _error(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _example_instance(registry: ModelRegistry) -> tuple[str, dict] | None:
    for name in sorted(registry.models):
        model = registry.get(name, None)
        return name, {f.name: 1.0 if f.type == "number" else 1 for f in model.features}
    return None


def build_openapi(registry: ModelRegistry, max_batch: int, max_body_bytes: int) -> dict:
    """OpenAPI 3.0 document of every route of the application."""
    example = _example_instance(registry)
    instance_schema = {
        "type": "object", "minProperties": 1,
        "description": "One instance: every feature of the model (GET /api/v1/models lists them) "
                       "with a finite number.",
        "additionalProperties": {"type": "number"},
    }
    batch_schema = {
        "type": "object", "required": ["instances"], "additionalProperties": False,
        "properties": {"instances": {"type": "array", "minItems": 1, "maxItems": max_batch,
                                     "items": {"$ref": "#/components/schemas/Instance"}}},
    }
    request_examples = {}
    if example:
        request_examples = {
            "single": {"summary": f"one {example[0]} instance", "value": example[1]},
            "batch": {"summary": f"a batch of two {example[0]} instances",
                      "value": {"instances": [example[1], example[1]]}},
        }
    auth_errors = {"401": _error("Missing, wrong or expired credentials."),
                   "503": _error("Overloaded (too many requests in flight; see Retry-After) or timed out."),
                   "408": _error("The request body did not arrive within the request timeout.")}
    return {
        "openapi": "3.0.3",
        "info": {"title": "Prediction service", "version": __version__,
                 "description": "ONNX model predictions over HTTP. Errors are always "
                                "`{\"error\": {\"code\", \"message\"}}`."},
        "security": [{"ApiKey": []}, {"BearerJWT": []}],
        "paths": {
            "/health": {"get": {
                "summary": "Liveness: the process is serving HTTP.", "security": [], "operationId": "health",
                "responses": {"200": {"description": "Alive.", "content": {"application/json": {
                    "schema": {"type": "object", "properties": {"status": {"type": "string"}}}}}}}}},
            "/ready": {"get": {
                "summary": "Readiness: models loaded; reports database and Redis state.",
                "security": [], "operationId": "ready",
                "responses": {"200": {"description": "Ready (status ready, or degraded when Redis or the "
                                                     "database is down).",
                                      "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Ready"}}}},
                              "503": {"description": "Not ready: no model loaded.",
                                      "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Ready"}}}}}}},
            "/metrics": {"get": {
                "summary": "Prometheus metrics (text exposition format).", "security": [], "operationId": "metrics",
                "responses": {"200": {"description": "Metrics.", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/api/openapi.json": {"get": {
                "summary": "This document.", "security": [], "operationId": "openapi",
                "responses": {"200": {"description": "OpenAPI 3 document.",
                                      "content": {"application/json": {"schema": {"type": "object"}}}}}}},
            "/api/v1/models": {"get": {
                "summary": "Models, their versions and input schema.", "operationId": "listModels",
                "responses": {"200": {"description": "Served models.", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/ModelList"}}}}, **auth_errors}}},
            PREDICT_PATH: {"post": {
                "summary": "Predict one instance or a batch.", "operationId": "predict",
                "parameters": [
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
                     "description": "Model name.", **({"example": example[0]} if example else {})},
                    {"name": "version", "in": "query", "required": False, "schema": {"type": "string"},
                     "description": "Model version; default: the highest loaded version."},
                ],
                "requestBody": {"required": True, "description":
                                f"One instance object, or {{\"instances\": [...]}} with 1 to {max_batch} "
                                f"instances; at most {max_body_bytes} bytes.",
                                "content": {"application/json": {
                                    "schema": {"oneOf": [{"$ref": "#/components/schemas/Instance"},
                                                         {"$ref": "#/components/schemas/Batch"}]},
                                    **({"examples": request_examples} if request_examples else {})}}},
                "responses": {
                    "200": {"description": "Predictions, one per instance, in request order.",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Prediction"}}}},
                    "400": _error("Malformed JSON."),
                    "404": _error("Unknown model or version."),
                    "413": _error("Body over the size limit."),
                    "415": _error("Content-Type is not application/json."),
                    "422": _error("Body is JSON but not valid input: missing, unknown or mistyped feature, "
                                  "non-finite number, empty or oversized batch."),
                    **auth_errors}}},
        },
        "components": {
            "securitySchemes": {
                "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "BearerJWT": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                              "description": "HS256, signed with PREDICTION_JWT_SECRET, must carry exp."},
            },
            "schemas": {
                "Instance": instance_schema,
                "Batch": batch_schema,
                "Prediction": {"type": "object", "required": ["model", "version", "predictions", "cached"],
                               "properties": {
                                   "model": {"type": "string"}, "version": {"type": "string"},
                                   "predictions": {"type": "array", "items": {"oneOf": [{"type": "string"}, {"type": "number"}]},
                                                   "description": "Class label (classifier) or value (regressor) per instance."},
                                   "probabilities": {"type": "array", "items": {
                                       "type": "object", "additionalProperties": {"type": "number"}},
                                       "description": "Classifiers only: probability per label, per instance."},
                                   "cached": {"type": "boolean", "description": "Every prediction came from the cache."},
                                   "cache_hits": {"type": "integer", "description": "How many instances came from the cache."},
                                   "request_id": {"type": "string"}}},
                "ModelList": {"type": "object", "properties": {"models": {"type": "array", "items": {
                    "type": "object", "properties": {
                        "name": {"type": "string"}, "default_version": {"type": "string"},
                        "versions": {"type": "array", "items": {"type": "object", "properties": {
                            "version": {"type": "string"}, "kind": {"type": "string", "enum": ["classifier", "regressor"]},
                            "description": {"type": "string"},
                            "features": {"type": "array", "items": {"type": "object", "properties": {
                                "name": {"type": "string"}, "type": {"type": "string", "enum": ["number", "integer"]}}}},
                            "labels": {"type": "array", "items": {"type": "string"}},
                            "cache": {"type": "boolean"},
                            "cache_tier": {"type": "string", "enum": ["shared", "local", "off"]}}}}}}}}},
                "Ready": {"type": "object", "properties": {
                    "status": {"type": "string", "enum": ["ready", "degraded", "not_ready"]},
                    "models_loaded": {"type": "integer"},
                    "failed_models": {"type": "array", "items": {"type": "object"}},
                    "redis": {"type": "string", "enum": ["up", "down"]},
                    "database": {"type": "string", "enum": ["up", "down", "disabled"]},
                    "db_queue_rows": {"type": "integer"}}},
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                    "type": "object", "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
            },
        },
    }
