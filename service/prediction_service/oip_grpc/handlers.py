"""The six RPCs of ``inference.GRPCInferenceService``, on the path the ``/v2`` routes take.

ModelInfer is ``POST /v2/models/{name}/infer`` in another encoding: the same model lookup, the same
input checks (its tensors go through v2/tensors.py's, converted to the JSON form), the same cache
tiers and model call (prediction.predict_rows), the same prediction-log rows; only the request and
response messages differ. Metadata answers come from the same functions as on ``/v2``.

Each handler takes the service state, the request message and the call (server.py: metadata,
request id, trailing metadata); failures are ApiErrors, which server.py turns into gRPC statuses.
"""
from __future__ import annotations

import math
import time

from .. import __version__
from ..errors import ApiError
from ..prediction import acknowledge, find_model, log_predictions, predict_rows
from ..state import ServiceState
from ..v2.handlers import EXTENSIONS, PLATFORM, SERVER_NAME, model_metadata_body
from ..v2.tensors import DATATYPES, bad, output_names, raw_output, tensor_rows
from . import messages as pb

# Each datatype's field of InferTensorContents (the types the models take; others are refused by name).
CONTENTS_FIELDS = {"FP32": "fp32_contents", "FP64": "fp64_contents"}


async def server_live(state: ServiceState, request, call):
    return pb.ServerLiveResponse(live=True)


async def server_ready(state: ServiceState, request, call):
    """Ready as /ready is: a model is loaded."""
    return pb.ServerReadyResponse(ready=state.registry.count > 0)


async def model_ready(state: ServiceState, request, call):
    """Every loaded version is ready; an unknown model or version is not (Triton answers the same way,
    and clients' ``is_model_ready`` expects a boolean rather than an error)."""
    try:
        find_model(state, request.name, request.version or None)
    except ApiError:
        return pb.ModelReadyResponse(ready=False)
    return pb.ModelReadyResponse(ready=True)


async def server_metadata(state: ServiceState, request, call):
    return pb.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=EXTENSIONS)


async def model_metadata(state: ServiceState, request, call):
    model = find_model(state, request.name, request.version or None)
    body = model_metadata_body(model, sorted(state.registry.models[model.name]))
    tensor = pb.ModelMetadataResponse.TensorMetadata
    return pb.ModelMetadataResponse(name=body["name"], versions=body["versions"], platform=body["platform"],
                                    inputs=[tensor(**t) for t in body["inputs"]],
                                    outputs=[tensor(**t) for t in body["outputs"]])


async def model_infer(state: ServiceState, request, call):
    start = time.perf_counter()
    model = find_model(state, request.model_name, request.model_version or None)
    inputs, binary = _json_form(request)
    rows = tensor_rows(inputs, model, state.settings.max_batch, binary)
    wanted = _requested_outputs(request, model)
    results, missing = await predict_rows(state, model, rows)
    rid = call.request_id()
    response = pb.ModelInferResponse(model_name=model.name, model_version=model.version, id=request.id or rid)
    response.parameters["cache_hits"].int64_param = len(rows) - len(missing)
    for name in wanted:
        tensor, raw = raw_output(model, name, results)
        response.outputs.add(name=name, datatype=tensor["datatype"], shape=tensor["shape"])
        response.raw_output_contents.append(raw)
    if state.writer is not None:  # the same rows as /api/v1 and /v2: each instance as a feature object
        names = model.feature_index
        log_predictions(state.writer, model, rid, [dict(zip(names, row)) for row in rows], results, missing, start)
        if state.settings.db_ack_after_write:  # as the HTTP middleware does
            await acknowledge(state)
    return response


def _json_form(request) -> tuple[list[dict], memoryview]:
    """The request's input tensors as v2/tensors.py takes them, and their raw contents in input order."""
    inputs, raw = request.inputs, request.raw_input_contents
    if not inputs:
        raise bad("inputs must be a non-empty list of tensors")
    if raw and len(raw) != len(inputs):
        raise bad(f"raw_input_contents has {len(raw)} entries for {len(inputs)} inputs; give one per input, "
                  "in input order (or none, and each input's contents)")
    tensors = []
    for i, t in enumerate(inputs):
        tensor = {"name": t.name, "shape": list(t.shape), "datatype": t.datatype}
        given = [f.name for f, _ in t.contents.ListFields()]
        if raw:
            if given:
                raise bad(f"input {t.name[:64]!r}: give raw_input_contents or contents, not both")
            _check_raw_size(t, i, len(raw[i]))
            tensor["parameters"] = {"binary_data_size": len(raw[i])}
        else:
            field = CONTENTS_FIELDS.get(t.datatype)
            if field is not None and given and given != [field]:
                raise bad(f"input {t.name[:64]!r}: {t.datatype} values go in contents.{field}, got {', '.join(given)}")
            tensor["data"] = list(getattr(t.contents, field)) if field is not None else []
        tensors.append(tensor)
    return tensors, memoryview(b"".join(raw))


def _check_raw_size(t, index: int, size: int) -> None:
    """The raw contents' size against the tensor's shape, in this form's words (tensors.py checks it
    again, naming binary_data_size)."""
    dtype = DATATYPES.get(t.datatype)
    if dtype is None or any(d < 0 for d in t.shape):
        return  # tensors.py names the bad datatype or shape
    need = math.prod(t.shape) * dtype.itemsize
    if size != need:
        raise bad(f"input {t.name[:64]!r}: raw_input_contents[{index}] has {size} bytes; shape {list(t.shape)} "
                  f"of {t.datatype} values needs {need}")


def _requested_outputs(request, model) -> list[str]:
    names = output_names(model)
    if not request.outputs:
        return list(names)
    wanted = [o.name for o in request.outputs]
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise bad(f"unknown output {unknown[0][:64]!r}; model {model.name} v{model.version} gives "
                  f"{', '.join(map(repr, names))}")
    if len(set(wanted)) != len(wanted):
        raise bad("an output is requested twice")
    return wanted
