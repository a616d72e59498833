"""The OIP v2 gRPC messages, as classes built at import from ``grpc_predict_v2.binpb`` (the descriptor set made
from ``grpc_predict_v2.proto``; the command is in that file).

They live in a descriptor pool of their own, not protobuf's default one: the OIP clients' generated modules
(``tritonclient.grpc``, ``kserve``) put the same names (``inference.ModelInferRequest``, ...) in the default
pool, and a second file declaring them there fails to import. With a pool of its own, the gateway's modules
import in any process beside any of them. The classes are untyped (``Any``): they come from a descriptor, not
from generated code.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "inference"
#: The service's full name: with each method's name, the path a client calls (``/inference.GRPCInferenceService/
#: ModelInfer``).
SERVICE = f"{PACKAGE}.GRPCInferenceService"
DESCRIPTOR_SET = "grpc_predict_v2.binpb"


def _load() -> descriptor_pool.DescriptorPool:
    data = files(__package__).joinpath(DESCRIPTOR_SET).read_bytes()
    pool = descriptor_pool.DescriptorPool()
    for proto in descriptor_pb2.FileDescriptorSet.FromString(data).file:
        pool.Add(proto)
    return pool


POOL = _load()


def _message(name: str) -> Any:
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))


ServerLiveResponse = _message("ServerLiveResponse")
ServerReadyResponse = _message("ServerReadyResponse")
ModelReadyResponse = _message("ModelReadyResponse")
ServerMetadataResponse = _message("ServerMetadataResponse")
ModelMetadataResponse = _message("ModelMetadataResponse")
ModelInferRequest = _message("ModelInferRequest")
ModelInferResponse = _message("ModelInferResponse")

#: Each method of the service, as the proto declares it: its request and response classes.
METHODS: dict[str, tuple[Any, Any]] = {
    method.name: (
        message_factory.GetMessageClass(method.input_type),
        message_factory.GetMessageClass(method.output_type),
    )
    for method in POOL.FindServiceByName(SERVICE).methods
}
