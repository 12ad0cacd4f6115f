"""The OpenAPI 3 document served at ``/api/openapi.json``, built from the loaded models.

Strict and truthful, so a schema-driven client or fuzzer can rely on it:

- request schemas accept exactly what the service accepts: one path per served model, whose body
  is that model's features (all required, no others, each a number within its range: declared in
  the metadata, or float32's) or a batch of 1 to PREDICTION_MAX_BATCH of them, and whose
  ``version`` is one of its loaded versions;
- every status the service can answer on an operation is listed, with the headers it always
  carries (``Retry-After`` on 503, ``WWW-Authenticate`` on 401, ``X-Request-ID`` on a prediction);
- two variants: straight to an instance, and through the nginx gateway (a request that carries
  ``X-Forwarded-Proto``, which the gateway always sets). The gateway variant leaves out what the
  gateway does not proxy (``/metrics``) and adds the statuses nginx answers itself (on ``/v2``
  paths in that protocol's error shape, as the service's).

The exact-schema promise holds when a model's versions share their features (as the demo models
do); versions with different features are documented as the union of their instances.
A test checks that every documented path resolves to a route of the application and back.
"""
from __future__ import annotations

from . import __version__
from .models import Model, ModelRegistry
from .v2.openapi import V2_ERROR_REF, v2_components, v2_paths

OPENAPI_PATH = "/api/openapi.json"
PREDICT_PATH = "/api/v1/models/{name}/predict"
ERROR_REF = {"$ref": "#/components/schemas/Error"}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "required": True,
                               "schema": {"type": "integer", "minimum": 0}}}

# What nginx answers itself on the proxied paths, before or instead of a replica, all as JSON
# {"error": {"code", "message"}} (roles/nginx_gateway/templates/nginx.conf.j2): malformed request,
# body over client_max_body_size, URI or headers too long, unsupported transfer coding or HTTP
# version, its own failure, and no replica answering.
GATEWAY_STATUSES = {
    "400": "Gateway: malformed HTTP request.",
    "413": "Gateway: body over the gateway's size limit.",
    "414": "Gateway: request URI too long.",
    "431": "Gateway: request headers too large.",
    "500": "Gateway: internal failure.",
    "501": "Gateway: unsupported Transfer-Encoding.",
    "502": "Gateway: no replica could be reached; retry after Retry-After.",
    "503": "Gateway: the service is unavailable; retry after Retry-After.",
    "504": "Gateway: no replica answered in time; retry after Retry-After.",
    "505": "Gateway: unsupported HTTP version (use HTTP/1.1).",
}
GATEWAY_RETRY_STATUSES = ("502", "503", "504")


def _json_content(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _error(description: str, headers: dict | None = None) -> dict:
    response = {"description": description, "content": _json_content(ERROR_REF)}
    if headers:
        response["headers"] = headers
    return response


def _union(schemas: list[dict]) -> dict:
    distinct = [s for i, s in enumerate(schemas) if s not in schemas[:i]]
    return distinct[0] if len(distinct) == 1 else {"anyOf": distinct}


# --- /api/v1 --------------------------------------------------------------------------------------

def _feature_schema(feature) -> dict:
    return {"type": "integer" if feature.type == "integer" else "number",
            "minimum": feature.minimum, "maximum": feature.maximum}


def instance_schema(model: Model) -> dict:
    """Exactly the model's features, each a number within its range (declared, or float32's)."""
    properties = {f.name: _feature_schema(f) for f in model.features}
    return {"type": "object", "properties": properties, "required": list(properties),
            "additionalProperties": False}


def _prediction_schema(model: Model) -> dict:
    properties = {"model": {"type": "string", "enum": [model.name]}, "version": {"type": "string"},
                  "cached": {"type": "boolean", "description": "Every prediction came from the cache."},
                  "cache_hits": {"type": "integer", "minimum": 0,
                                 "description": "How many instances came from the cache."},
                  "request_id": {"type": "string"}}
    required = ["model", "version", "predictions", "cached", "cache_hits", "request_id"]
    if model.kind == "classifier":
        labels = list(model.labels)
        properties["predictions"] = {"type": "array", "items": {"type": "string", "enum": labels},
                                     "description": "Predicted label per instance, in request order."}
        properties["probabilities"] = {
            "type": "array", "description": "Probability of each label, per instance.",
            "items": {"type": "object", "required": labels,
                      "properties": {label: {"type": "number", "minimum": 0, "maximum": 1} for label in labels}}}
        required.append("probabilities")
    else:
        properties["predictions"] = {"type": "array", "items": {"type": "number"},
                                     "description": "Predicted value per instance, in request order."}
    return {"type": "object", "required": required, "properties": properties}


def _api_errors(error_ref: dict = ERROR_REF) -> dict:
    """Statuses of every authenticated operation (of /api/v1, or with the V2 error body of /v2)."""
    def error(description: str, headers: dict) -> dict:
        return {"description": description, "content": _json_content(error_ref), "headers": headers}

    return {"401": error("Missing, wrong or expired credentials.", headers={
                "WWW-Authenticate": {"required": True, "schema": {"type": "string"},
                                     "description": "The Bearer challenge."}}),
            "503": error("Overloaded (too many requests in flight), timed out, or the instance is "
                         "shutting down.", headers=RETRY_AFTER)}


def _predict_operation(name: str, versions: dict[str, Model], default: str, max_batch: int,
                       max_body_bytes: int) -> dict:
    models = [versions[v] for v in sorted(versions)]
    instance = _union([instance_schema(m) for m in models])
    batch = {"type": "object", "required": ["instances"], "additionalProperties": False,
             "properties": {"instances": {"type": "array", "minItems": 1, "maxItems": max_batch,
                                          "items": instance}}}
    example = {f.name: max(f.minimum, min(1.0, f.maximum)) if f.type == "number" else 1
               for f in versions[default].features}
    return {"post": {
        "summary": f"Predict with {name}: one instance or a batch.", "operationId": f"predict_{name}",
        "parameters": [{"name": "version", "in": "query", "required": False,
                        "schema": {"type": "string", "enum": sorted(versions)},
                        "description": f"Model version; default {default}."}],
        "requestBody": {"required": True,
                        "description": f"One instance object, or {{\"instances\": [...]}} with 1 to {max_batch} "
                                       f"instances; at most {max_body_bytes} bytes.",
                        "content": {"application/json": {
                            "schema": {"oneOf": [instance, batch]},
                            "examples": {"single": {"summary": f"one {name} instance", "value": example},
                                         "batch": {"summary": f"a batch of two {name} instances",
                                                   "value": {"instances": [example, example]}}}}}},
        "responses": {
            "200": {"description": "Predictions, one per instance, in request order.",
                    "headers": {"X-Request-ID": {"required": True, "schema": {"type": "string"},
                                                 "description": "Also in the body and the prediction log."}},
                    "content": _json_content(_union([_prediction_schema(m) for m in models]))},
            "400": _error("Malformed JSON."),
            "404": _error("No such version of this model."),
            "408": _error("The request body did not arrive within the request timeout."),
            "413": _error("Body over the size limit."),
            "415": _error("Content-Type is not application/json."),
            "422": _error("Body is JSON but not valid input: missing, unknown or mistyped feature, "
                          "non-finite number, value outside the feature's range, empty or oversized batch."),
            **_api_errors()}}}


def _model_list_schema() -> dict:
    feature = {"type": "object", "properties": {"name": {"type": "string"},
                                                "type": {"type": "string", "enum": ["number", "integer"]},
                                                "minimum": {"type": "number"}, "maximum": {"type": "number"}}}
    version = {"type": "object", "properties": {
        "version": {"type": "string"}, "kind": {"type": "string", "enum": ["classifier", "regressor"]},
        "description": {"type": "string"}, "features": {"type": "array", "items": feature},
        "labels": {"type": "array", "items": {"type": "string"}}, "cache": {"type": "boolean"},
        "cache_tier": {"type": "string", "enum": ["shared", "local", "off"]},
        "max_batch_size": {"type": "integer", "minimum": 1,
                           "description": "Adaptive batching: most instances in one inference call (1 = off)."},
        "max_batch_delay_us": {"type": "integer", "minimum": 0,
                               "description": "Adaptive batching: how long a batch that is not full may wait."}}}
    model = {"type": "object", "properties": {"name": {"type": "string"}, "default_version": {"type": "string"},
                                              "versions": {"type": "array", "items": version}}}
    return {"type": "object", "required": ["models"],
            "properties": {"models": {"type": "array", "items": model}}}


def _v1_paths(registry: ModelRegistry, max_batch: int, max_body_bytes: int) -> dict:
    paths = {"/api/v1/models": {"get": {
        "summary": "Models, their versions and input schema.", "operationId": "listModels",
        "responses": {"200": {"description": "Served models.",
                              "content": _json_content({"$ref": "#/components/schemas/ModelList"})},
                      **_api_errors()}}}}
    for name in sorted(registry.models):
        paths[PREDICT_PATH.format(name=name)] = _predict_operation(
            name, registry.models[name], registry.default_versions[name], max_batch, max_body_bytes)
    return paths


# --- probes and this document ---------------------------------------------------------------------

def _ready_schema() -> dict:
    return {"type": "object", "required": ["status", "models_loaded", "redis", "database"], "properties": {
        "status": {"type": "string", "enum": ["ready", "degraded", "not_ready"]},
        "models_loaded": {"type": "integer"},
        "failed_models": {"type": "array", "items": {"type": "object"}},
        "redis": {"type": "string", "enum": ["up", "down"]},
        "database": {"type": "string", "enum": ["up", "down", "disabled"]},
        "storage": {"type": "string", "enum": ["timescaledb", "partitions", "unknown", "disabled"],
                    "description": "What the prediction tables are: TimescaleDB hypertables, or native daily "
                                   "partitions (PostgreSQL without TimescaleDB); unknown until the database "
                                   "has answered (or before migrations); disabled without DB logging."},
        "db_queue_rows": {"type": "integer"}}}


def _probe_paths(with_metrics: bool) -> dict:
    ready = {"$ref": "#/components/schemas/Ready"}
    paths = {
        "/health": {"get": {
            "summary": "Liveness: the process is serving HTTP.", "security": [], "operationId": "health",
            "responses": {"200": {"description": "Alive.", "content": _json_content(
                {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}})}}}},
        "/ready": {"get": {
            "summary": "Readiness: models loaded; reports database and Redis state.",
            "security": [], "operationId": "ready",
            "responses": {"200": {"description": "Ready (status ready, or degraded when Redis or the database is down).",
                                  "content": _json_content(ready)},
                          "503": {"description": "Not ready: no model loaded.", "content": _json_content(ready)}}}},
        OPENAPI_PATH: {"get": {
            "summary": "This document.", "security": [], "operationId": "openapi",
            "responses": {"200": {"description": "OpenAPI 3 document.",
                                  "content": _json_content({"type": "object"})}}}},
    }
    if with_metrics:  # never proxied by the gateway: Prometheus scrapes each instance
        paths["/metrics"] = {"get": {
            "summary": "Prometheus metrics (text exposition format).", "security": [], "operationId": "metrics",
            "responses": {"200": {"description": "Metrics.", "content": {"text/plain": {"schema": {"type": "string"}}}}}}}
    return paths


def _add_gateway_statuses(paths: dict) -> None:
    """Every operation also documents what nginx answers itself (JSON errors, on /v2 in V2's shape)."""
    for path, operations in paths.items():
        error_ref = V2_ERROR_REF if path == "/v2" or path.startswith("/v2/") else ERROR_REF
        for operation in operations.values():
            responses = operation["responses"]
            for status, description in GATEWAY_STATUSES.items():
                headers = RETRY_AFTER if status in GATEWAY_RETRY_STATUSES else None
                own = responses.get(status)
                if own is None:
                    responses[status] = {"description": description, "content": _json_content(error_ref),
                                         **({"headers": headers} if headers else {})}
                    continue
                # The instance answers this status too: one entry, either body; the header is
                # required only if both send it.
                merged = {"description": f"{own['description']} {description}",
                          "content": _json_content(_union([own["content"]["application/json"]["schema"], error_ref]))}
                if headers and "Retry-After" in own.get("headers", {}):
                    merged["headers"] = headers
                elif headers:
                    merged["headers"] = {"Retry-After": {**RETRY_AFTER["Retry-After"], "required": False}}
                responses[status] = merged


def _components() -> dict:
    return {
        "securitySchemes": {
            "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            "BearerJWT": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                          "description": "HS256, signed with PREDICTION_JWT_SECRET, must carry exp."},
        },
        "schemas": {
            "ModelList": _model_list_schema(),
            "Ready": _ready_schema(),
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                "type": "object", "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
            **v2_components(),
        },
    }


def build_openapi(registry: ModelRegistry, max_batch: int, max_body_bytes: int, *, gateway: bool = False) -> dict:
    """The document for clients of one instance, or (``gateway``) of the nginx gateway."""
    paths = {**_probe_paths(with_metrics=not gateway), **_v1_paths(registry, max_batch, max_body_bytes),
             **v2_paths(registry, max_batch, max_body_bytes, _api_errors(V2_ERROR_REF))}
    if gateway:
        _add_gateway_statuses(paths)
    where = "through the gateway" if gateway else "straight to one instance"
    return {
        "openapi": "3.0.3",
        "info": {"title": "Prediction service", "version": __version__,
                 "description": f"ONNX model predictions over HTTP ({where}): /api/v1, and the Open Inference "
                                "Protocol (KServe V2 REST) under /v2. Errors are `{\"error\": {\"code\", \"message\"}}`, "
                                "on /v2 paths `{\"error\": \"<message>\"}`."},
        "security": [{"ApiKey": []}, {"BearerJWT": []}],
        "paths": paths,
        "components": _components(),
    }
