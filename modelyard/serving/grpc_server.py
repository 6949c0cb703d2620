"""The gRPC port: the Go front end (`grpc_front.py`) when it is installed, with every
method but ModelInfer proxied to Python's gRPC server on a Unix socket; else Python's
gRPC server on the port itself. Either way with MLServer's V2 services, options and
Prometheus interceptor, over this server's data plane and repository."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from grpc import aio
from mlserver.grpc.dataplane_pb2_grpc import add_GRPCInferenceServiceServicer_to_server
from mlserver.grpc.interceptors import LoggingInterceptor, PromServerInterceptor
from mlserver.grpc.model_repository import ModelRepositoryServicer
from mlserver.grpc.model_repository_pb2_grpc import add_ModelRepositoryServiceServicer_to_server

from modelyard.mlserver_internals import GRPCInferMetrics
from modelyard.serving.auth import Auth, AuthOptions, GRPCAuthInterceptor, grpc_server_credentials
from modelyard.serving.dataplane import DataPlane
from modelyard.serving.grpc import AllButModelInfer, InferenceServicer
from modelyard.serving.grpc_front import GRPCFront
from modelyard.serving.model_config import config_handler
from modelyard.serving.probes import add_probes
from modelyard.serving.repository import Repository

logger = logging.getLogger(__name__)


class GRPCServer:
    def __init__(
        self,
        host: str,
        port: int,
        max_message_bytes: int,
        max_metadata_bytes: int,
        data_plane: DataPlane,
        repository: Repository,
        front: GRPCFront | None,
        debug: bool = False,
        auth: Auth | None = None,
        tls: AuthOptions | None = None,
    ):
        self.listen = f"{host}:{port}"
        self.max_message_bytes = max_message_bytes
        self.max_metadata_bytes = max_metadata_bytes
        self.front = front
        interceptors: list[aio.ServerInterceptor] = [LoggingInterceptor()] if debug else []
        prom = PromServerInterceptor(enable_handling_time_histogram=True)
        interceptors.append(AllButModelInfer(prom))
        self.servicer = InferenceServicer(data_plane, repository, GRPCInferMetrics(prom))
        if auth is not None:  # the repository API's check, and inference's when asked for
            interceptors.insert(0, GRPCAuthInterceptor(auth))
            self.servicer.auth = auth if auth.inference_required else None
        self.tls = tls if tls is not None and tls.tls_cert is not None else None
        self._interceptors = interceptors
        self._data_plane = data_plane
        self._repository = repository
        self._server: aio.Server | None = None
        self._listening = False

    @property
    def listening(self) -> bool:
        """Whether the gRPC port takes calls: readiness waits for it."""
        return self.front.listening if self.front is not None else self._listening

    def _options(self) -> list[tuple[str, Any]]:
        return [
            ("grpc.max_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            # Soft and hard limit alike: a call over it is refused, never half-read.
            ("grpc.max_metadata_size", self.max_metadata_bytes),
            ("grpc.absolute_max_metadata_size", self.max_metadata_bytes),
        ]

    def _create(self, address: str) -> aio.Server:
        server = aio.server(interceptors=self._interceptors, options=self._options())
        add_GRPCInferenceServiceServicer_to_server(self.servicer, server)
        # MLServer's repository servicer calls the repository by the names it knows.
        add_ModelRepositoryServiceServicer_to_server(
            ModelRepositoryServicer(self._repository),  # type: ignore[arg-type]
            server,
        )
        add_probes(server, self._data_plane)
        server.add_generic_rpc_handlers((config_handler(self._data_plane),))
        if self.tls is not None and self.front is None:  # else TLS is the front end's
            server.add_secure_port(address, grpc_server_credentials(self.tls))
        else:
            server.add_insecure_port(address)
        return server

    async def serve(self) -> None:
        """Take the port (once this process serves: the caller decides when) and answer
        until stopped."""
        if self.front is None:
            self._server = self._create(self.listen)
            await self._server.start()
            self._listening = True
            logger.info("gRPC on %s", self.listen)
            await self._server.wait_for_termination()
            return
        # Started before gRPC's own threads, whose fork handlers would log a warning.
        await self.front.start(
            self.listen, self.max_message_bytes, self.max_metadata_bytes, self.servicer
        )
        self._server = self._create(self.front.backend_address)
        await self._server.start()
        await self.front.open()
        await asyncio.gather(self._server.wait_for_termination(), self.front.supervise())

    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking calls, answer those received, within ``grace`` seconds."""
        if self.front is not None:  # the port first: no new call reaches a closing server
            await self.front.stop(grace)
        if self._server is not None:
            await self._server.stop(grace=grace)
