"""Triton's model configuration, derived from the declaration, over REST and both gRPC
servers (the Go front end's and Python's), as tritonclient and perf_analyzer read it."""

from __future__ import annotations

import grpc
import pytest
import requests
import tritonclient.grpc as grpcclient
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.json_format import MessageToDict
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from tests.support.clients import Client, expect_error, make_client
from tests.support.server import ServerProcess, copy_model, running

IRIS = {
    "name": "iris",
    "platform": "sklearn",
    "backend": "sklearn",
    "max_batch_size": 1024,
    "input": [{"name": "input-0", "data_type": "TYPE_FP64", "dims": [4]}],
    "output": [{"name": "predict", "data_type": "TYPE_INT64", "dims": [1]}],
}
BREAST_CANCER = {
    "name": "breast-cancer",
    "backend": "xgboost",
    "max_batch_size": 1024,
    "input": [{"name": "input-0", "data_type": "TYPE_FP32", "dims": [30]}],
    "output": [{"name": "predict", "data_type": "TYPE_INT64", "dims": [1]}],
}


def config(client: Client, model: str, version: str = "") -> dict:
    found = client.get_model_config(model, version)
    if isinstance(client, grpcclient.InferenceServerClient):
        # Triton's own messages parse what the server sent: the same wire format.
        found = MessageToDict(found.config, preserving_proto_field_name=True)
        found.setdefault("max_batch_size", 0)  # proto3 leaves out a field that is 0
        for tensor in (*found.get("input", []), *found.get("output", [])):
            tensor["dims"] = [int(d) for d in tensor["dims"]]
    return found


@pytest.fixture(scope="module")
def python_grpc(tmp_path_factory: pytest.TempPathFactory):
    """A server whose gRPC port is Python's own server (no Go front end)."""
    root = tmp_path_factory.mktemp("python-grpc")
    models = root / "models"
    copy_model("iris", models)
    server = ServerProcess(
        models, root / "serve.log", ["--no-watch"], env={"MODELYARD_GRPC_FRONT": "off"}
    )
    with running(server):
        assert "through" not in server.log()
        yield server


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_config_is_derived_from_the_declaration(protocol: str, repo_server: ServerProcess) -> None:
    client = make_client(protocol, repo_server)
    if protocol == "grpc":  # the Go front end relays ModelConfig to Python's server
        assert "through" in repo_server.log() and "modelyard-grpc-front" in repo_server.log()
    assert config(client, "iris") == IRIS
    assert config(client, "iris", "1") == IRIS
    found = config(client, "breast-cancer")
    assert {k: found[k] for k in BREAST_CANCER} == BREAST_CANCER


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_config_of_a_model_without_batch_dimension(
    protocol: str, repo_server: ServerProcess
) -> None:
    """The text classifier's inputs have no batch dimension of Triton's kind: its config
    is unbatched, with the whole shapes."""
    found = config(make_client(protocol, repo_server), "sentiment")
    assert found["max_batch_size"] == 0
    args = next(t for t in found["input"] if t["name"] == "args")
    assert args == {"name": "args", "data_type": "TYPE_STRING", "dims": [-1]}


def test_config_over_pythons_grpc_server(python_grpc: ServerProcess) -> None:
    assert config(make_client("grpc", python_grpc), "iris") == IRIS


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_config_of_an_unknown_model_is_not_found(protocol: str, repo_server: ServerProcess) -> None:
    client = make_client(protocol, repo_server)
    expect_error(client, lambda: client.get_model_config("nope"), 404, "NOT_FOUND", "nope")
    expect_error(
        client, lambda: client.get_model_config("iris", "7"), 404, "NOT_FOUND", "iris", "7"
    )


def test_unknown_model_config_over_pythons_grpc_server(python_grpc: ServerProcess) -> None:
    client = make_client("grpc", python_grpc)
    expect_error(client, lambda: client.get_model_config("nope"), 404, "NOT_FOUND", "nope")


def test_rest_config_paths(repo_server: ServerProcess) -> None:
    base = repo_server.base + "/v2/models/iris"
    for path in ("/config", "/versions/1/config"):
        answer = requests.get(base + path, timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "application/json"
        assert answer.json() == IRIS


@pytest.mark.parametrize("front", ["go", "python"])
def test_reflection_lists_and_resolves_model_config(
    front: str, repo_server: ServerProcess, python_grpc: ServerProcess
) -> None:
    """What grpcurl does with no .proto files: list the services, resolve
    GRPCInferenceService/ModelConfig from the server's descriptors and call it with
    messages built from them alone."""
    server = repo_server if front == "go" else python_grpc
    with grpc.insecure_channel(server.grpc_url) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert "inference.GRPCInferenceService" in database.get_services()
        pool = descriptor_pool.DescriptorPool(database)
        service = pool.FindServiceByName("inference.GRPCInferenceService")
        assert {"ModelInfer", "ModelMetadata", "ModelConfig"} <= set(service.methods_by_name)
        method = service.methods_by_name["ModelConfig"]
        assert method.input_type.full_name == "inference.ModelConfigRequest"
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelConfig",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        answer = call(request_class(name="iris"), timeout=10)
    found = MessageToDict(answer.config, preserving_proto_field_name=True)
    for tensor in (*found["input"], *found["output"]):
        tensor["dims"] = [int(d) for d in tensor["dims"]]
    assert found == IRIS
