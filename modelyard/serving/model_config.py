"""Triton's model configuration, derived from a model's V2 metadata (its declaration).

Tools written for Triton ask for it before anything else: perf_analyzer stops with
`failed to get model config` without it, tritonclient's `get_model_config` reads it.
REST answers ``GET /v2/models/{m}[/versions/{v}]/config`` with Triton's JSON; gRPC
answers ``inference.GRPCInferenceService/ModelConfig`` with Triton's messages.

MLServer's protocol buffers have no ModelConfig, and Triton's (tritonclient's) cannot
share protobuf's default pool with MLServer's, which define the same V2 messages; so
the messages served here are built in a pool of their own, with Triton's names and
field numbers for the fields that are filled: the same bytes on the wire.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from fastapi import FastAPI
from fastapi.responses import ORJSONResponse
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import FileDescriptor
from grpc import aio
from mlserver.errors import MLServerError
from mlserver.types import MetadataTensor

from modelyard.serving.dataplane import DataPlane
from modelyard.serving.grpc import status_code

SERVICE = "inference.GRPCInferenceService"

# V2 datatype -> Triton's DataType (model_config.proto).
DATA_TYPES = {
    "BOOL": "TYPE_BOOL", "UINT8": "TYPE_UINT8", "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32", "UINT64": "TYPE_UINT64", "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16", "INT32": "TYPE_INT32", "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16", "FP32": "TYPE_FP32", "FP64": "TYPE_FP64",
    "BYTES": "TYPE_STRING", "BF16": "TYPE_BF16",
}  # fmt: skip
_ENUM = ["TYPE_INVALID", "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32",
         "TYPE_UINT64", "TYPE_INT8", "TYPE_INT16", "TYPE_INT32", "TYPE_INT64", "TYPE_FP16",
         "TYPE_FP32", "TYPE_FP64", "TYPE_STRING", "TYPE_BF16"]  # fmt: skip
# The largest batch a request may carry, when the declaration sets no maximum.
DEFAULT_MAX_BATCH = 1024


def _batched(tensors: Sequence[MetadataTensor]) -> bool:
    """Every tensor has a leading variable dimension and one more: Triton's batching."""
    return all(len(t.shape) >= 2 and t.shape[0] == -1 for t in tensors)


def _tensor(tensor: MetadataTensor, batched: bool) -> dict[str, Any]:
    dims = list(tensor.shape[1:] if batched else tensor.shape)
    return {
        "name": tensor.name,
        "data_type": DATA_TYPES.get(tensor.datatype, "TYPE_INVALID"),
        "dims": [d if d >= 0 else -1 for d in dims],
    }


def config_from_metadata(
    name: str,
    platform: str,
    backend: str,
    inputs: Sequence[MetadataTensor],
    outputs: Sequence[MetadataTensor],
    max_batch_size: int | None = None,
) -> dict[str, Any]:
    """Triton's configuration of a model with these inputs and outputs. When every
    tensor's first dimension is the batch (``-1`` then at least one more), the config
    is batched (``max_batch_size`` over 0, ``dims`` without that dimension), as
    Triton's own; else ``max_batch_size`` is 0 and ``dims`` are the whole shapes."""
    batched = bool(inputs) and _batched([*inputs, *outputs])
    return {
        "name": name,
        "platform": platform,
        "backend": backend,
        "max_batch_size": (max_batch_size or DEFAULT_MAX_BATCH) if batched else 0,
        "input": [_tensor(t, batched) for t in inputs],
        "output": [_tensor(t, batched) for t in outputs],
    }


async def model_config(data_plane: DataPlane, name: str, version: str | None) -> dict[str, Any]:
    """The configuration of a loaded model; MLServer's 404 for one it does not know."""
    model = await data_plane.models.get_model(name, version)
    meta = await data_plane.model_metadata(name, version)
    runtime = _runtime(model.settings.implementation_ or "")
    batch = model.settings.max_batch_size
    return config_from_metadata(
        meta.name,
        meta.platform or runtime,
        runtime,
        meta.inputs or [],
        meta.outputs or [],
        batch if batch > 1 else None,
    )


def _runtime(implementation: str) -> str:
    """``sklearn`` of ``mlserver_sklearn.SKLearnModel``, ``onnx`` of
    ``modelyard_runtimes.onnx.OnnxModel``."""
    parts = implementation.split(".")
    if parts[0] == "modelyard_runtimes" and len(parts) > 2:
        return parts[1]
    return parts[0].removeprefix("mlserver_")


# -- REST --------------------------------------------------------------------------------
def add_config_routes(app: FastAPI, data_plane: DataPlane) -> None:
    async def config(model_name: str, model_version: str | None = None) -> dict[str, Any]:
        return await model_config(data_plane, model_name, model_version)

    for path in ("/v2/models/{model_name}/config",
                 "/v2/models/{model_name}/versions/{model_version}/config"):  # fmt: skip
        app.add_api_route(path, config, methods=["GET"], response_class=ORJSONResponse)


# -- gRPC --------------------------------------------------------------------------------
def _config_file() -> descriptor_pb2.FileDescriptorProto:
    """ModelConfigRequest, ModelConfigResponse and what they hold, as grpc_service.proto
    and model_config.proto number them."""
    F = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="modelyard/model_config.proto", package="inference", syntax="proto3"
    )
    enum = file.enum_type.add(name="DataType")
    for number, value in enumerate(_ENUM):
        enum.value.add(name=value, number=number)

    def message(name: str, *fields: tuple[str, int, int, int, str]) -> None:
        msg = file.message_type.add(name=name)
        for field_name, number, kind, label, type_name in fields:
            field = msg.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = type_name

    one, many = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    tensor = (("name", 1, F.TYPE_STRING, one, ""),
              ("data_type", 2, F.TYPE_ENUM, one, ".inference.DataType"))  # fmt: skip
    message("ModelInput", *tensor, ("dims", 4, F.TYPE_INT64, many, ""))
    message("ModelOutput", *tensor, ("dims", 3, F.TYPE_INT64, many, ""))
    message(
        "ModelConfig",
        ("name", 1, F.TYPE_STRING, one, ""),
        ("platform", 2, F.TYPE_STRING, one, ""),
        ("backend", 17, F.TYPE_STRING, one, ""),
        ("max_batch_size", 4, F.TYPE_INT32, one, ""),
        ("input", 5, F.TYPE_MESSAGE, many, ".inference.ModelInput"),
        ("output", 6, F.TYPE_MESSAGE, many, ".inference.ModelOutput"),
    )
    message(
        "ModelConfigRequest",
        ("name", 1, F.TYPE_STRING, one, ""),
        ("version", 2, F.TYPE_STRING, one, ""),
    )
    message("ModelConfigResponse", ("config", 1, F.TYPE_MESSAGE, one, ".inference.ModelConfig"))
    return file


CONFIG_FILE = _config_file()


def _messages() -> tuple[Any, Any]:
    """The request and response classes, in a descriptor pool of their own."""
    pool = descriptor_pool.DescriptorPool()
    pool.Add(CONFIG_FILE)
    get = message_factory.GetMessageClass
    return (
        get(pool.FindMessageTypeByName("inference.ModelConfigRequest")),
        get(pool.FindMessageTypeByName("inference.ModelConfigResponse")),
    )


ModelConfigRequest, ModelConfigResponse = _messages()


def config_handler(data_plane: DataPlane) -> grpc.GenericRpcHandler:
    """``ModelConfig`` on the V2 service, beside MLServer's methods."""

    async def config(request: Any, context: aio.ServicerContext) -> Any:
        try:
            found = await model_config(data_plane, request.name, request.version or None)
        except MLServerError as e:
            await context.abort(code=status_code(e), details=str(e))
            raise AssertionError("unreachable: context.abort raises") from None
        return json_format.ParseDict({"config": found}, ModelConfigResponse())

    handler = grpc.unary_unary_rpc_method_handler(
        config,
        request_deserializer=ModelConfigRequest.FromString,
        response_serializer=ModelConfigResponse.SerializeToString,
    )
    return grpc.method_handlers_generic_handler(SERVICE, {"ModelConfig": handler})


def reflection_pool(*files: FileDescriptor) -> descriptor_pool.DescriptorPool:
    """The descriptors server reflection hands out: ``files`` (and what they import) as
    they are, except MLServer's dataplane.proto, whose inference service gets the
    ``ModelConfig`` method served above, so grpcurl lists it, describes it and calls it."""
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(file: FileDescriptor) -> None:
        if file.name in added:
            return
        for dependency in file.dependencies:
            add(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        service = next((s for s in proto.service if f"{proto.package}.{s.name}" == SERVICE), None)
        if service is not None:
            pool.Add(CONFIG_FILE)
            proto.dependency.append(CONFIG_FILE.name)
            service.method.add(
                name="ModelConfig",
                input_type=".inference.ModelConfigRequest",
                output_type=".inference.ModelConfigResponse",
            )
        pool.Add(proto)
        added.add(file.name)

    for file in files:
        add(file)
    return pool
