"""Request parsing and validation for ``POST /api/v1/models/{name}/predict``.

Accepted body (``Content-Type: application/json``, at most PREDICTION_MAX_BODY_BYTES):

- one instance: an object of feature values, e.g. ``{"sepal_length": 5.1, ..., "petal_width": 0.2}``;
- a batch: ``{"instances": [<instance>, ...]}`` with 1 to PREDICTION_MAX_BATCH instances.

Each instance must have exactly the model's features, each a finite JSON number (``integer``
features: a JSON integer) within float32 range, or within the feature's ``minimum``/``maximum``
when its metadata declares them. Every failure is an ApiError naming the instance and feature at fault.
"""
from __future__ import annotations

import json

import orjson

from .errors import ApiError
from .models import FLOAT32_MAX, Model

MAX_NAMES_IN_MESSAGE = 5


def _short(text: str, limit: int = 64) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _names(names) -> str:
    names = sorted(names)
    shown = ", ".join(repr(_short(n)) for n in names[:MAX_NAMES_IN_MESSAGE])
    return shown + (f" and {len(names) - MAX_NAMES_IN_MESSAGE} more" if len(names) > MAX_NAMES_IN_MESSAGE else "")


def _reject_constant(name: str):
    raise ApiError(422, "non_finite_number", f"{name} is not a valid JSON number; send finite numbers only")


# Built once: json.loads(..., parse_constant=...) would construct a new decoder per request.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def check_content_type(content_type: str, accepted: tuple[str, ...] = ("application/json",)) -> None:
    if content_type not in accepted:
        got = content_type or "none"
        raise ApiError(415, "unsupported_media_type",
                       f"Content-Type must be {' or '.join(accepted)}, got {_short(got)}")


def parse_json(body: bytes):
    """Decode the body as strict JSON (no NaN/Infinity literals)."""
    if not body:
        raise ApiError(400, "malformed_json", "request body is empty; send a JSON object")
    # Fast path: orjson parses a valid body several times faster than the json module and is
    # stricter (no NaN/Infinity, no lone surrogates, nesting limit). Anything it refuses goes
    # through the json module below, so every error keeps its exact code and message.
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "malformed_json", "request body is not valid UTF-8") from None
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise ApiError(400, "malformed_json",
                       f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise ApiError(400, "malformed_json", "request body is nested too deeply") from None
    except ValueError as exc:  # e.g. an integer literal with more digits than Python converts
        raise ApiError(400, "malformed_json", f"request body is not valid JSON: {_short(str(exc), 120)}") from None


def instances_of(doc, max_batch: int) -> list:
    """The list of instances in the request document (one for a single-instance body)."""
    if not isinstance(doc, dict):
        raise ApiError(422, "invalid_body",
                       'body must be a JSON object: one instance of feature values, or {"instances": [...]}')
    if "instances" not in doc:
        return [doc]
    if len(doc) != 1:
        extra = [k for k in doc if k != "instances"]
        raise ApiError(422, "invalid_body", f"a batch body holds only 'instances'; unexpected keys: {_names(extra)}")
    instances = doc["instances"]
    if not isinstance(instances, list):
        raise ApiError(422, "invalid_body", "'instances' must be a list of instance objects")
    if not instances:
        raise ApiError(422, "empty_batch", "'instances' is empty; send at least one instance")
    if len(instances) > max_batch:
        raise ApiError(422, "batch_too_large",
                       f"batch has {len(instances)} instances; the limit is {max_batch} per request")
    return instances


def feature_row(instance, model: Model, index: int) -> list[float]:
    """Validate one instance against the model's features; return its values in metadata order."""
    where = f"instance {index}"
    if type(instance) is not dict:
        raise ApiError(422, "invalid_instance", f"{where} must be a JSON object of feature values")
    feature_index = model.feature_index
    bounds = model.bounds
    n = len(feature_index)
    row = [0.0] * n
    seen = 0
    for key, value in instance.items():
        i = feature_index.get(key)
        if i is None:
            unknown = [k for k in instance if k not in feature_index]
            raise ApiError(422, "unknown_feature",
                           f"{where}: unknown feature(s) {_names(unknown)}; "
                           f"model {model.name} v{model.version} takes {_names(feature_index)}")
        t = type(value)
        if t is float or t is int:
            lo, hi = bounds[i]
            if not lo <= value <= hi:  # also false for NaN and the infinities
                raise out_of_range(model, i, value, where)
            if t is int:
                value = float(value)
            elif model.features[i].type == "integer" and not value.is_integer():
                raise ApiError(422, "invalid_feature_type", f"{where}: feature {key!r} must be an integer, got {value!r}")
        else:
            raise ApiError(422, "invalid_feature_type",
                           f"{where}: feature {key!r} must be a number, got {_json_type(value)}")
        row[i] = value
        seen += 1
    if seen != n:
        missing = [name for name in feature_index if name not in instance]
        raise ApiError(422, "missing_feature", f"{where}: missing feature(s) {_names(missing)}")
    return row


def check_row(row: list, model: Model, where: str) -> None:
    """Validate the values of one row given in feature order (the V2 tensors): the checks of
    :func:`feature_row`, with the same errors."""
    bounds, features = model.bounds, model.features
    for i, value in enumerate(row):
        t = type(value)
        if t is not float and t is not int:
            raise ApiError(422, "invalid_feature_type",
                           f"{where}: feature {features[i].name!r} must be a number, got {_json_type(value)}")
        lo, hi = bounds[i]
        if not lo <= value <= hi:  # also false for NaN and the infinities
            raise out_of_range(model, i, value, where)
        if t is float and features[i].type == "integer" and not value.is_integer():
            raise ApiError(422, "invalid_feature_type",
                           f"{where}: feature {features[i].name!r} must be an integer, got {value!r}")


def out_of_range(model: Model, i: int, value, where: str) -> ApiError:
    """The error for a value outside feature ``i``'s accepted range (float32, or the declared one)."""
    feature = model.features[i]
    shown = value if isinstance(value, float) else _short(str(value), 40)
    if not -FLOAT32_MAX <= value <= FLOAT32_MAX:  # exact for ints of any size too; false for NaN
        return ApiError(422, "non_finite_number",
                        f"{where}: feature {feature.name!r} must be a finite number within float32 range, got {shown}")
    return ApiError(422, "out_of_range",
                    f"{where}: feature {feature.name!r} must be between {feature.minimum:g} and "
                    f"{feature.maximum:g} for model {model.name} v{model.version}, got {shown}")


def _json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
