"""The protocol's message classes, built from ``open_inference_grpc.protoset`` in a pool of our own.

Why not protoc's usual ``*_pb2.py`` modules: they register ``inference.*`` in protobuf's default
pool, where tritonclient's generated modules (imported by anyone testing or calling us from the same
process) register the same names, and the second import fails with "duplicate symbol". A private
pool holds ours apart; the classes are the same upb-backed messages protoc's modules give.

The protoset is protoc's ``--descriptor_set_out`` of the vendored ``open_inference_grpc.proto``
(``make grpc-protoset`` regenerates it; a test checks that it is current). grpcurl reads the same
file: ``grpcurl -protoset open_inference_grpc.protoset …``.
"""
from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

HERE = Path(__file__).resolve().parent
PROTOSET = HERE / "open_inference_grpc.protoset"
SERVICE_NAME = "inference.GRPCInferenceService"

_pool = descriptor_pool.DescriptorPool()
for _file in descriptor_pb2.FileDescriptorSet.FromString(PROTOSET.read_bytes()).file:
    _pool.Add(_file)

SERVICE = _pool.FindServiceByName(SERVICE_NAME)


def message_class(full_name: str):
    """The message class of ``inference.<Name>`` (nested: ``inference.Outer.Inner``)."""
    return message_factory.GetMessageClass(_pool.FindMessageTypeByName(full_name))


def _message(name: str):
    return message_class(f"inference.{name}")


ServerLiveResponse = _message("ServerLiveResponse")
ServerReadyResponse = _message("ServerReadyResponse")
ModelReadyResponse = _message("ModelReadyResponse")
ServerMetadataResponse = _message("ServerMetadataResponse")
ModelMetadataResponse = _message("ModelMetadataResponse")
ModelInferRequest = _message("ModelInferRequest")
ModelInferResponse = _message("ModelInferResponse")
InferParameter = _message("InferParameter")
