"""V2 inference requests → validated feature rows, and results → V2 inference responses.

Accepted inputs (row-major data, flat or nested JSON, or Triton binary tensor data):

- one ``[N, n_features]`` tensor named after the model's ONNX input (``input`` for the demo
  models), columns in the metadata's feature order; or
- one ``[N]`` (or ``[N, 1]``) tensor per feature, named after the feature.

Datatype FP32 or FP64; 1 ≤ N ≤ PREDICTION_MAX_BATCH. Each value then passes the same checks as an
``/api/v1`` instance (validation.check_row), so both APIs accept and answer the same instances.
Outputs: a classifier's ``label`` (BYTES ``[N]``) and ``probabilities`` (FP32 ``[N, n_labels]``, in
label order); a regressor's ``prediction`` (FP32 ``[N]``).

Binary tensor data (Triton's extension, what tritonclient sends by default): the body is the JSON
object (``Inference-Header-Content-Length`` bytes) followed by each binary input's bytes, in input
order, sized by its ``binary_data_size`` parameter; little-endian. Outputs are sent the same way
when the request's ``binary_data_output`` or an output's ``binary_data`` parameter is true.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import orjson

from ..errors import ApiError
from ..models import Model
from ..repeats import Answer
from ..validation import check_row, parse_json

DATATYPES = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8")}
BINARY_HEADER = "Inference-Header-Content-Length"
REQUEST_KEYS = frozenset({"id", "parameters", "inputs", "outputs"})
INPUT_KEYS = frozenset({"name", "shape", "datatype", "parameters", "data"})
OUTPUT_KEYS = frozenset({"name", "parameters"})
MAX_NAMES = 5


def bad(message: str) -> ApiError:
    return ApiError(400, "invalid_inference_request", message)


def output_names(model: Model) -> tuple[str, ...]:
    return ("label", "probabilities") if model.kind == "classifier" else ("prediction",)


@dataclass(slots=True)
class InferRequest:
    id: str | None
    rows: list[list[float]]
    outputs: list[tuple[str, bool]]  # (name, as binary data), in the order to answer them


@dataclass(slots=True)
class _Tensor:
    name: str
    shape: list[int]
    dtype: np.dtype
    data: list | None
    binary_size: int | None


def _short(text: str, limit: int = 64) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _names(names) -> str:
    names = list(names)
    shown = ", ".join(repr(_short(str(n))) for n in names[:MAX_NAMES])
    return shown + (f" and {len(names) - MAX_NAMES} more" if len(names) > MAX_NAMES else "")


def _parameters(obj: dict, where: str) -> dict:
    """``obj``'s parameters (an absent key means none; null or any non-object is refused)."""
    if "parameters" not in obj:
        return {}
    value = obj["parameters"]
    if type(value) is not dict:
        raise bad(f"{where}: parameters must be an object")
    for key, v in value.items():
        if type(v) not in (str, int, float, bool):
            raise bad(f"{where}: parameter {_short(key)!r} must be a string, number or boolean")
    return value


def _extra_keys(obj: dict, allowed: frozenset, where: str) -> None:
    extra = obj.keys() - allowed
    if extra:
        raise bad(f"{where}: unexpected key(s) {_names(sorted(extra))}; allowed: {_names(sorted(allowed))}")


def _tensor(index: int, obj) -> _Tensor:
    where = f"input {index}"
    if type(obj) is not dict:
        raise bad(f"{where} must be an object with name, shape, datatype and data")
    _extra_keys(obj, INPUT_KEYS, where)
    name = obj.get("name")
    if type(name) is not str:
        raise bad(f"{where}: name must be a string")
    where = f"input {_short(name)!r}"
    shape = obj.get("shape")
    if type(shape) is not list or not all(type(d) is int and d >= 0 for d in shape):
        raise bad(f"{where}: shape must be a list of non-negative integers")
    datatype = obj.get("datatype")
    dtype = DATATYPES.get(datatype) if type(datatype) is str else None
    if dtype is None:
        raise bad(f"{where}: datatype must be FP32 or FP64, got {_short(str(obj.get('datatype')))}")
    size = _parameters(obj, where).get("binary_data_size")
    data = obj.get("data")
    if size is not None:
        if type(size) is not int or size < 0:
            raise bad(f"{where}: binary_data_size must be a non-negative integer")
        if "data" in obj:
            raise bad(f"{where}: give either data or binary_data_size, not both")
    elif type(data) is not list:
        raise bad(f"{where}: data must be a list of numbers (flat or nested)")
    return _Tensor(name, shape, dtype, data, size)


def _flat(data: list) -> list:
    """Nested lists → one flat list, row-major; a flat list is returned as it is."""
    if not data or type(data[0]) is not list:
        return data
    out: list = []
    for item in data:
        if type(item) is list:
            out.extend(_flat(item))
        else:
            out.append(item)
    return out


def _values(t: _Tensor, count: int, binary: memoryview, offset: int) -> tuple[list, int]:
    """The tensor's ``count`` values as Python numbers, and the binary offset after it."""
    if t.binary_size is not None:
        if t.binary_size != count * t.dtype.itemsize:
            raise bad(f"input {_short(t.name)!r}: binary_data_size is {t.binary_size} bytes; shape {t.shape} "
                      f"of {t.dtype.itemsize}-byte values needs {count * t.dtype.itemsize}")
        end = offset + t.binary_size
        if end > len(binary):
            raise bad(f"input {_short(t.name)!r}: binary data ends after {len(binary) - offset} of "
                      f"{t.binary_size} bytes")
        return np.frombuffer(binary[offset:end], dtype=t.dtype).tolist(), end
    values = _flat(t.data)
    if len(values) != count:
        raise bad(f"input {_short(t.name)!r}: shape {t.shape} holds {count} values but data has {len(values)}")
    return values, offset


def _batch_size(n: int, max_batch: int) -> None:
    if n == 0:
        raise bad("the batch is empty (N = 0); send at least one instance")
    if n > max_batch:
        raise bad(f"the batch has {n} instances; the limit is {max_batch} per request")


def _rows(tensors: list[_Tensor], model: Model, max_batch: int, binary: memoryview) -> list[list]:
    n_features = len(model.features)
    offset = 0
    if len(tensors) == 1 and len(tensors[0].shape) == 2 and tensors[0].name not in model.feature_index:
        t = tensors[0]
        if t.name != model.input_name:
            raise bad(f"input {_short(t.name)!r}: the [N, {n_features}] input of model {model.name} "
                      f"is named {model.input_name!r}")
        n, width = t.shape
        if width != n_features:
            raise bad(f"input {t.name!r}: shape {t.shape}: model {model.name} v{model.version} takes "
                      f"{n_features} features per instance ({_names(model.feature_index)})")
        _batch_size(n, max_batch)
        values, offset = _values(t, n * width, binary, offset)
        rows = [values[i:i + width] for i in range(0, n * width, width)]
    else:
        names = [t.name for t in tensors]
        if len(set(names)) != len(names):
            raise bad(f"duplicate input names: {_names(sorted({x for x in names if names.count(x) > 1}))}")
        unknown = [x for x in names if x not in model.feature_index]
        if unknown:
            raise bad(f"unknown input(s) {_names(unknown)}; model {model.name} v{model.version} takes one [N] "
                      f"tensor per feature ({_names(model.feature_index)}) or one [N, {n_features}] "
                      f"tensor named {model.input_name!r}")
        missing = [f.name for f in model.features if f.name not in names]
        if missing:
            raise bad(f"missing input(s) {_names(missing)}: send one [N] tensor per feature")
        for t in tensors:
            if not (len(t.shape) == 1 or (len(t.shape) == 2 and t.shape[1] == 1)):
                raise bad(f"input {_short(t.name)!r}: shape must be [N] (or [N, 1]), got {t.shape}")
        sizes = {t.shape[0] for t in tensors}
        if len(sizes) != 1:
            raise bad(f"the feature inputs disagree on N: {sorted(sizes)}")
        n = sizes.pop()
        _batch_size(n, max_batch)
        columns: list = [None] * n_features
        for t in tensors:
            columns[model.feature_index[t.name]], offset = _values(t, n, binary, offset)
        rows = [list(r) for r in zip(*columns)]
    if offset != len(binary):
        raise bad(f"the body has {len(binary) - offset} bytes of binary data that no input claims")
    for i, row in enumerate(rows):
        check_row(row, model, f"instance {i}")
    return rows


def _requested_outputs(doc: dict, model: Model, binary_default: bool) -> list[tuple[str, bool]]:
    names = output_names(model)
    if "outputs" not in doc:
        return [(name, binary_default) for name in names]
    value = doc["outputs"]
    if type(value) is not list or not value:
        raise bad("outputs must be a non-empty list of {name, parameters}")
    wanted = []
    for i, obj in enumerate(value):
        if type(obj) is not dict or type(obj.get("name")) is not str:
            raise bad(f"output {i} must be an object with a name")
        _extra_keys(obj, OUTPUT_KEYS, f"output {i}")
        if obj["name"] not in names:
            raise bad(f"unknown output {_short(obj['name'])!r}; model {model.name} v{model.version} gives {_names(names)}")
        binary = _parameters(obj, f"output {obj['name']!r}").get("binary_data", binary_default)
        if type(binary) is not bool:
            raise bad(f"output {obj['name']!r}: binary_data must be true or false")
        wanted.append((obj["name"], binary))
    if len({name for name, _ in wanted}) != len(wanted):
        raise bad("an output is requested twice")
    return wanted


def parse_request(body: bytes, header_length: str | None, model: Model, max_batch: int) -> InferRequest:
    """Decode and validate an inference request for ``model``; every fault is a 400 naming it."""
    binary = memoryview(b"")
    if header_length is not None:
        try:
            json_length = int(header_length)
        except ValueError:
            json_length = -1
        if not 0 < json_length <= len(body):
            raise bad(f"{BINARY_HEADER} must be the JSON header's length, 1 to {len(body)} bytes")
        binary = memoryview(body)[json_length:]
        body = body[:json_length]
    doc = parse_json(body)
    if type(doc) is not dict:
        raise bad('the body must be a JSON object: {"inputs": [...]}')
    _extra_keys(doc, REQUEST_KEYS, "the request")
    request_id = doc.get("id")
    if "id" in doc and type(request_id) is not str:
        raise bad("id must be a string")
    binary_default = _parameters(doc, "the request").get("binary_data_output", False)
    if type(binary_default) is not bool:
        raise bad("binary_data_output must be true or false")
    inputs = doc.get("inputs")
    if type(inputs) is not list or not inputs:
        raise bad("inputs must be a non-empty list of tensors")
    rows = tensor_rows(inputs, model, max_batch, binary)
    return InferRequest(request_id, rows, _requested_outputs(doc, model, binary_default))


def tensor_rows(inputs: list, model: Model, max_batch: int, binary: memoryview = memoryview(b"")) -> list[list]:
    """Validated feature rows from input tensors in the JSON form (name, shape, datatype, and data or
    parameters.binary_data_size), binary data in input order. The gRPC form (oip_grpc/) converts its
    input tensors to these, so both forms accept the same inputs and name the same faults."""
    return _rows([_tensor(i, x) for i, x in enumerate(inputs)], model, max_batch, binary)


# --- responses ------------------------------------------------------------------------------------

def _bytes_tensor(strings: list[str]) -> bytes:
    parts = []
    for s in strings:
        raw = s.encode()
        parts.append(struct.pack("<I", len(raw)))
        parts.append(raw)
    return b"".join(parts)


def _output(model: Model, name: str, results: list[dict]) -> tuple[dict, list]:
    n = len(results)
    if name == "label":
        return {"name": name, "datatype": "BYTES", "shape": [n]}, [r["label"] for r in results]
    if name == "probabilities":
        data = [p for r in results for p in r["probabilities"].values()]
        return {"name": name, "datatype": "FP32", "shape": [n, len(model.labels)]}, data
    return {"name": name, "datatype": "FP32", "shape": [n]}, [r["value"] for r in results]


def raw_output(model: Model, name: str, results: list[dict]) -> tuple[dict, bytes]:
    """Output ``name`` as its tensor (name, datatype, shape) and its data as raw little-endian bytes
    (BYTES: each string length-prefixed), as binary data and the gRPC form's raw contents carry it."""
    tensor, data = _output(model, name, results)
    return tensor, _bytes_tensor(data) if tensor["datatype"] == "BYTES" else np.asarray(data, "<f4").tobytes()


def encode_response(model: Model, request: InferRequest, results: list[dict], cache_hits: int) -> Answer:
    """The response, to be rendered with its id (the request's ``id``, else the request id); binary
    output data follows the JSON when an output asks for it."""
    outputs, blobs = [], []
    for name, binary in request.outputs:
        if binary:
            tensor, blob = raw_output(model, name, results)
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor, data = _output(model, name, results)
            tensor["data"] = data
        outputs.append(tensor)
    # {"model_name", "model_version", "id", "parameters", "outputs"}, cut around the id's value.
    head = orjson.dumps({"model_name": model.name, "model_version": model.version})[:-1] + b',"id":'
    tail = b"," + orjson.dumps({"parameters": {"cache_hits": cache_hits}, "outputs": outputs})[1:]
    fixed_id = None if request.id is None else orjson.dumps(request.id)
    return Answer(head, fixed_id, tail, b"".join(blobs) if blobs else None)
