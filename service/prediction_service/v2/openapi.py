"""The ``/v2`` part of the OpenAPI document: one set of paths per served model and version.

The infer request schema admits every body the service accepts (so anything outside it is
rejected), but it cannot be exact: JSON Schema (OpenAPI 3.0 has one schema for all items of an array)
cannot tie a tensor's shape to the model's feature count or to its data length, nor the feature
inputs' N to each other. Such a body matches the schema and gets a 400 naming the fault.

Triton's binary tensor data extension is the ``application/octet-stream`` form: the body starts with
the JSON inference request, ``Inference-Header-Content-Length`` bytes of it, and goes on with the raw
bytes of each input whose ``binary_data_size`` parameter says so. Its schema is that JSON part (what a
tool can generate and check), the rest is said in words: JSON Schema cannot describe the bytes after it
nor tie the header to its length, which is the other stated limit (a binary input whose bytes do not
follow gets a 400). The header is not a declared parameter: OpenAPI cannot tie a header to one media
type, and declared for the operation, fuzzers send random lengths with JSON bodies and hardly any
valid request gets through. It is not "any bytes": a body that does not start with the request is
refused, as the document says.
"""
from __future__ import annotations

from ..models import Model, ModelRegistry
from .handlers import MODEL_PATH, VERSION_PATH
from .tensors import BINARY_HEADER, output_names

V2_ERROR_REF = {"$ref": "#/components/schemas/V2Error"}
_PARAMETER_VALUE = {"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]}


def _content(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _error(description: str, headers: dict | None = None) -> dict:
    return {"description": description, "content": _content(V2_ERROR_REF), **({"headers": headers} if headers else {})}


def _parameters(known: dict | None = None) -> dict:
    return {"type": "object", "properties": known or {}, "additionalProperties": _PARAMETER_VALUE}


_NOT_BINARY = {"not": {"required": ["binary_data_size"]}}


def _tensor_input(names: list[str], shape_items: tuple[int, int], max_dim: int, binary: bool) -> dict:
    """An input tensor: its values in ``data``, or (``binary``) ``binary_data_size`` bytes after the JSON."""
    data = {"type": "array", "items": {"anyOf": [{"type": "number"}, {"type": "array", "items": {}}]},
            "description": "Row-major values, flat or nested."}
    size = {"type": "integer", "minimum": 0,
            "description": "Binary tensor data: the input's values are this many bytes after the JSON request "
                           "(row-major, little-endian, 4 bytes per FP32 value, 8 per FP64), and it has no data."}
    tensor = {"type": "object", "required": ["name", "shape", "datatype"] + ([] if binary else ["data"]),
              "additionalProperties": False,
              "properties": {
                  "name": {"type": "string", "enum": names},
                  "shape": {"type": "array", "minItems": shape_items[0], "maxItems": shape_items[1],
                            "items": {"type": "integer", "minimum": 1, "maximum": max_dim}},
                  "datatype": {"type": "string", "enum": ["FP32", "FP64"]},
                  "parameters": _parameters({"binary_data_size": size}) if binary else {**_parameters(), **_NOT_BINARY},
                  "data": data}}
    if binary:  # either data in the JSON, or binary_data_size and its bytes after it: never both
        tensor["oneOf"] = [{"required": ["data"], "properties": {"parameters": _NOT_BINARY}},
                           {"required": ["parameters"], "properties": {"parameters": {"required": ["binary_data_size"]}},
                            "not": {"required": ["data"]}}]
    return tensor


def infer_request_schema(model: Model, max_batch: int, binary: bool = False) -> dict:
    """The JSON inference request; with ``binary``, the JSON part of a binary tensor data body."""
    n = len(model.features)
    matrix = {"type": "array", "minItems": 1, "maxItems": 1,
              "items": _tensor_input([model.input_name], (2, 2), max(max_batch, n), binary),
              "description": f"One [N, {n}] tensor named {model.input_name!r}, columns in feature order: "
                             f"{', '.join(model.feature_index)}."}
    per_feature = {"type": "array", "minItems": n, "maxItems": n,
                   "items": _tensor_input(list(model.feature_index), (1, 2), max_batch, binary),
                   "description": "One [N] (or [N, 1]) tensor per feature, named after it."}
    names = list(output_names(model))
    outputs = {"type": "array", "minItems": 1, "maxItems": len(names), "items": {
        "type": "object", "required": ["name"], "additionalProperties": False,
        "properties": {"name": {"type": "string", "enum": names},
                       "parameters": _parameters({"binary_data": {"type": "boolean"}})}},
        "description": "Each output at most once."}
    if len(names) == 2:  # no "contains" in OpenAPI 3.0: two items must not both carry the same name
        outputs["not"] = {"anyOf": [{"minItems": 2, "items": {"properties": {"name": {"enum": [name]}}}}
                                    for name in names]}
    return {"type": "object", "required": ["inputs"], "additionalProperties": False, "properties": {
        "id": {"type": "string"},
        "parameters": _parameters({"binary_data_output": {"type": "boolean"}}),
        "inputs": {"anyOf": [matrix, per_feature]},
        "outputs": outputs}}


BINARY_BODY = ("Triton's binary tensor data extension: the body starts with this JSON inference request (UTF-8), "
               f"whose length in bytes the {BINARY_HEADER} header gives (required when an input is binary), then "
               "holds the bytes of each input that has a binary_data_size parameter, in input order, that many "
               "each, and nothing more. Without that header the whole body is this JSON request and no input may "
               "be binary.")
HEADER_LENGTH = {"type": "integer", "minimum": 1}


def _infer_operation(model: Model, suffix: str, max_batch: int, max_body_bytes: int, api_errors: dict) -> dict:
    example = [max(f.minimum, min(1.0, f.maximum)) for f in model.features]
    n = len(example)
    examples = {
        "matrix": {"summary": f"one [1, {n}] tensor", "value": {"id": "example-1", "inputs": [
            {"name": model.input_name, "shape": [1, n], "datatype": "FP32", "data": example}]}},
        "per_feature": {"summary": "one [1] tensor per feature", "value": {"inputs": [
            {"name": f.name, "shape": [1], "datatype": "FP32", "data": [v]} for f, v in zip(model.features, example)]}}}
    return {"post": {
        "summary": f"V2 inference with {model.name}{suffix}.", "operationId": f"v2_infer_{model.name}{suffix.replace(' ', '_')}",
        "requestBody": {"required": True, "description":
                        f"1 to {max_batch} instances, at most {max_body_bytes} bytes: a JSON inference request, "
                        "or (application/octet-stream) Triton's binary tensor data extension, what tritonclient "
                        "sends: the JSON request, then each binary input's little-endian bytes.",
                        "content": {
                            "application/json": {"schema": infer_request_schema(model, max_batch), "examples": examples},
                            "application/octet-stream": {
                                "schema": {**infer_request_schema(model, max_batch, binary=True),
                                           "description": BINARY_BODY},
                                "examples": examples}}},
        "responses": {
            "200": {"description": f"Output tensors; binary ones follow the JSON response ({BINARY_HEADER} bytes).",
                    "headers": {"X-Request-ID": {"required": True, "schema": {"type": "string"}},
                                BINARY_HEADER: {"required": False, "schema": HEADER_LENGTH, "description":
                                                "With binary outputs (application/octet-stream): the length of "
                                                "the JSON response the body starts with."}},
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/V2InferResponse"}},
                                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
            "400": _error("Not a valid inference request for this model: the message names the fault."),
            "408": _error("The request body did not arrive within the request timeout."),
            "413": _error("Body over the size limit."),
            "415": _error("Content-Type is neither application/json nor application/octet-stream."),
            **api_errors}}}


def _model_paths(model: Model, base: str, suffix: str, max_batch: int, max_body_bytes: int, api_errors: dict) -> dict:
    op = f"{model.name}{suffix.replace(' ', '_')}"
    return {
        base: {"get": {"summary": f"Metadata of {model.name}{suffix}: inputs and outputs.", "operationId": f"v2_metadata_{op}",
                       "responses": {"200": {"description": "Model metadata.",
                                             "content": _content({"$ref": "#/components/schemas/V2ModelMetadata"})},
                                     **api_errors}}},
        base + "/ready": {"get": {"summary": f"Is {model.name}{suffix} ready?", "operationId": f"v2_ready_{op}",
                                  "security": [],
                                  "responses": {"200": {"description": "Ready.", "content": _content(
                                      {"$ref": "#/components/schemas/V2ModelReady"})}}}},
        base + "/infer": _infer_operation(model, suffix, max_batch, max_body_bytes, api_errors),
    }


def v2_paths(registry: ModelRegistry, max_batch: int, max_body_bytes: int, api_errors: dict) -> dict:
    """Every /v2 path served; ``api_errors``: the statuses of authenticated operations (401, 503)."""
    paths = {
        "/v2": {"get": {"summary": "V2 server metadata: name, version, extensions.", "operationId": "v2_server_metadata",
                        "responses": {"200": {"description": "Server metadata.", "content": _content(
                            {"$ref": "#/components/schemas/V2ServerMetadata"})}, **api_errors}}},
        "/v2/health/live": {"get": {
            "summary": "V2 server live.", "operationId": "v2_live", "security": [],
            "responses": {"200": {"description": "Live.", "content": _content(
                {"type": "object", "required": ["live"], "properties": {"live": {"type": "boolean"}}})}}}},
        "/v2/health/ready": {"get": {
            "summary": "V2 server ready: a model is loaded (200 true, 400 false).", "operationId": "v2_ready",
            "security": [],
            "responses": {status: {"description": text, "content": _content(
                {"type": "object", "required": ["ready"], "properties": {"ready": {"type": "boolean"}}})}
                for status, text in (("200", "Ready."), ("400", "Not ready: no model loaded."))}}},
    }
    for name in sorted(registry.models):
        versions = registry.models[name]
        default = versions[registry.default_versions[name]]
        paths.update(_model_paths(default, MODEL_PATH.format(name=name), "", max_batch, max_body_bytes, api_errors))
        for version in sorted(versions):
            paths.update(_model_paths(versions[version], VERSION_PATH.format(name=name, version=version),
                                      f" v{version}", max_batch, max_body_bytes, api_errors))
    return paths


def v2_components() -> dict:
    tensor = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
        "name": {"type": "string"}, "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}}}}
    output = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
        **tensor["properties"], "parameters": {"type": "object"},
        "data": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "number"}]}}}}
    return {
        "V2Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
        "V2ServerMetadata": {"type": "object", "required": ["name", "version", "extensions"], "properties": {
            "name": {"type": "string"}, "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}}}},
        "V2ModelMetadata": {"type": "object", "required": ["name", "platform", "inputs", "outputs"], "properties": {
            "name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"}, "inputs": {"type": "array", "items": tensor},
            "outputs": {"type": "array", "items": tensor}}},
        "V2ModelReady": {"type": "object", "required": ["name", "ready"], "properties": {
            "name": {"type": "string"}, "ready": {"type": "boolean"}}},
        "V2InferResponse": {"type": "object", "required": ["model_name", "id", "outputs"], "properties": {
            "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
            "parameters": {"type": "object"}, "outputs": {"type": "array", "items": output}}},
    }
