"""The standard probes: gRPC health v1 and server reflection, REST health bodies.

- `grpc.health.v1.Health` answers for the server (service `""` or the V2 inference
  service's name: ready to take inference) and for each model (service = the model's
  name: SERVING while it is ready, NOT_FOUND for a name no model has), so Kubernetes'
  native gRPC probes and grpcurl work. `Watch` sends the status at once, then each
  change.
- Server reflection lists the V2 services, ModelConfig among the inference service's
  methods, so grpcurl needs no .proto files.
- REST `/v2/health/live` and `/v2/health/ready` answer with the Open Inference
  Protocol's bodies, `{"live": true}` and `{"ready": true}` (200, or 400 when false),
  which the KServe SDK's clients read.
"""

from __future__ import annotations

import asyncio

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2
from mlserver.errors import ModelNotFound
from mlserver.grpc import dataplane_pb2, model_repository_pb2

from modelyard.serving.dataplane import DataPlane
from modelyard.serving.model_config import reflection_pool

INFERENCE_SERVICE = dataplane_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
REPOSITORY_SERVICE = model_repository_pb2.DESCRIPTOR.services_by_name[
    "ModelRepositoryService"
].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# How often a Watch looks at the status again.
WATCH_INTERVAL_S = 0.5

Status = health_pb2.HealthCheckResponse.ServingStatus


class HealthServicer(health_pb2_grpc.HealthServicer):
    def __init__(self, data_plane: DataPlane):
        self.data_plane = data_plane

    async def status(self, service: str) -> int:
        """The status of ``service``: the server's, or a model's by its name."""
        if service in ("", INFERENCE_SERVICE):
            return Status.SERVING if await self.data_plane.ready() else Status.NOT_SERVING
        try:
            ready = await self.data_plane.model_ready(service)
        except ModelNotFound:
            return Status.SERVICE_UNKNOWN
        return Status.SERVING if ready else Status.NOT_SERVING

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        status = await self.status(request.service)
        if status == Status.SERVICE_UNKNOWN:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no model or service named '{request.service}'; ask for '' (the server) "
                "or a model's name",
            )
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: aio.ServicerContext
    ) -> None:
        # Written, not yielded: the Prometheus interceptor awaits what it wraps.
        last = None
        while True:
            status = await self.status(request.service)
            if status != last:
                await context.write(health_pb2.HealthCheckResponse(status=status))
                last = status
            await asyncio.sleep(WATCH_INTERVAL_S)


def add_probes(server: aio.Server, data_plane: DataPlane) -> None:
    """Health and reflection on ``server``, beside the V2 services it already has."""
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(data_plane), server)
    services = (INFERENCE_SERVICE, REPOSITORY_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME)
    files = (dataplane_pb2, model_repository_pb2, health_pb2, reflection_pb2)
    pool = reflection_pool(*(f.DESCRIPTOR for f in files))
    reflection.enable_server_reflection(services, server, pool=pool)
