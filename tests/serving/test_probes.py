"""The standard probes against a real server: gRPC health v1 (what Kubernetes' native
gRPC probes call), server reflection (what grpcurl reads) and the Open Inference
Protocol's REST health bodies (what the KServe SDK reads)."""

from __future__ import annotations

import grpc
import pytest
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.support.server import ServerProcess

SERVING = health_pb2.HealthCheckResponse.SERVING


def test_rest_health_answers_with_the_protocols_bodies(repo_server: ServerProcess) -> None:
    live = requests.get(f"{repo_server.base}/v2/health/live", timeout=5)
    assert (live.status_code, live.json()) == (200, {"live": True})
    ready = requests.get(f"{repo_server.base}/v2/health/ready", timeout=5)
    assert (ready.status_code, ready.json()) == (200, {"ready": True})
    assert ready.headers["content-type"] == "application/json"


def test_grpc_health_for_the_server_and_each_model(repo_server: ServerProcess) -> None:
    with grpc.insecure_channel(repo_server.grpc_url) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService", "iris", "breast-cancer"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert answer.status == SERVING, service
        with pytest.raises(grpc.RpcError) as info:
            health.Check(health_pb2.HealthCheckRequest(service="no-such-model"), timeout=5)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert "no-such-model" in info.value.details()
        watch = health.Watch(health_pb2.HealthCheckRequest(service="iris"), timeout=5)
        assert next(watch).status == SERVING
        watch.cancel()


def test_grpc_reflection_lists_the_services(repo_server: ServerProcess) -> None:
    with grpc.insecure_channel(repo_server.grpc_url) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        answer = next(stub.ServerReflectionInfo(iter([request]), timeout=5))
        names = {s.name for s in answer.list_services_response.service}
        assert {
            "inference.GRPCInferenceService",
            "inference.model_repository.ModelRepositoryService",
            "grpc.health.v1.Health",
        } <= names
        # A client can read the inference service's definition from the server itself.
        request = reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="inference.GRPCInferenceService"
        )
        answer = next(stub.ServerReflectionInfo(iter([request]), timeout=5))
        assert answer.file_descriptor_response.file_descriptor_proto
