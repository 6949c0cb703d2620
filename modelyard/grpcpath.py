"""V2 gRPC inference without MLServer's per-call layers, as `fastpath` does for REST.

MLServer wraps every call in a Prometheus interceptor (a coroutine around the
handler and a metrics wrapper per call) and an error decorator that logs each bad
request with its traceback. Here `ModelInfer` is answered by the same data plane,
the same converters and the same errors, and records the interceptor's own metrics
(`grpc_server_started_total`, `grpc_server_handled_total`, `grpc_server_handling_seconds`)
itself, through label values resolved once: dashboards and alerts see no difference.
The interceptor still measures every other method.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc import aio
from mlserver.errors import MLServerError
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc.converters import ModelInferRequestConverter, ModelInferResponseConverter
from mlserver.grpc.dataplane_pb2_grpc import add_GRPCInferenceServiceServicer_to_server
from mlserver.grpc.interceptors import LoggingInterceptor, PromServerInterceptor
from mlserver.grpc.model_repository import ModelRepositoryServicer
from mlserver.grpc.model_repository_pb2_grpc import add_ModelRepositoryServiceServicer_to_server
from mlserver.grpc.server import GRPCServer
from mlserver.grpc.servicers import InferenceServicer
from mlserver.grpc.utils import _grpc_status_code, to_metadata
from mlserver.utils import extract_headers, insert_headers

logger = logging.getLogger("modelyard.grpcpath")

SERVICE = "inference.GRPCInferenceService"
MODEL_INFER = f"/{SERVICE}/ModelInfer"


class InferMetrics:
    """The Prometheus interceptor's metrics for unary ModelInfer calls."""

    def __init__(self, prom: PromServerInterceptor):
        interceptor = prom._interceptor
        labels = {"grpc_type": "UNARY", "grpc_service": SERVICE, "grpc_method": "ModelInfer"}
        self.started = interceptor._metrics["grpc_server_started_counter"].labels(**labels)
        self.seconds = interceptor._metrics["grpc_server_handled_histogram"].labels(**labels)
        self._handled = interceptor._grpc_server_handled_total_counter
        self._labels = labels
        self._by_code: dict[grpc.StatusCode, Any] = {}

    def handled(self, code: grpc.StatusCode, seconds: float) -> None:
        child = self._by_code.get(code)
        if child is None:
            child = self._by_code[code] = self._handled.labels(**self._labels, grpc_code=code.name)
        child.inc()
        self.seconds.observe(seconds)


class FastInferenceServicer(InferenceServicer):
    metrics: InferMetrics | None = None

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: aio.ServicerContext
    ) -> pb.ModelInferResponse:
        start = time.perf_counter()
        if self.metrics is not None:
            self.metrics.started.inc()
        code = grpc.StatusCode.OK
        try:
            payload = ModelInferRequestConverter.to_types(request)
            metadata = context.invocation_metadata()
            if metadata:
                insert_headers(payload, {m.key: m.value for m in metadata})
            result = await self._data_plane.infer(
                payload=payload, name=request.model_name, version=request.model_version
            )
            headers = extract_headers(result)
            if headers:
                context.set_trailing_metadata(to_metadata(headers))
            return ModelInferResponseConverter.from_types(
                result, use_raw=bool(request.raw_input_contents)
            )
        except MLServerError as e:
            code = _grpc_status_code(e)
            await context.abort(code=code, details=str(e))
        except Exception as e:
            logger.exception("model '%s': inference failed", request.model_name)
            code = grpc.StatusCode.INTERNAL
            await context.abort(code=code, details=f"{type(e).__name__}: {e}")
        finally:
            if self.metrics is not None:
                self.metrics.handled(code, time.perf_counter() - start)
        raise AssertionError("unreachable: context.abort raises")


class _AllButModelInfer(aio.ServerInterceptor):
    """``inner`` for every method but ModelInfer, which measures itself."""

    def __init__(self, inner: aio.ServerInterceptor):
        self.inner = inner

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if details.method == MODEL_INFER:  # type: ignore[attr-defined]
            return await continuation(details)
        return await self.inner.intercept_service(continuation, details)


class FastGRPCServer(GRPCServer):
    """MLServer's gRPC server with `FastInferenceServicer` (same options and services)."""

    def _create_server(self) -> aio.Server:
        servicer = FastInferenceServicer(self._data_plane, self._model_repository_handlers)
        self._inference_servicer = servicer
        self._model_repository_servicer = ModelRepositoryServicer(self._model_repository_handlers)
        self._interceptors: list[aio.ServerInterceptor] = []
        if self._settings.debug:
            self._interceptors.append(LoggingInterceptor())
        if self._settings.metrics_endpoint:
            prom = PromServerInterceptor(enable_handling_time_histogram=True)
            servicer.metrics = InferMetrics(prom)
            self._interceptors.append(_AllButModelInfer(prom))
        self._server = aio.server(interceptors=self._interceptors, options=self._get_options())
        add_GRPCInferenceServiceServicer_to_server(servicer, self._server)
        add_ModelRepositoryServiceServicer_to_server(self._model_repository_servicer, self._server)
        self._server.add_insecure_port(f"{self._settings.host}:{self._settings.grpc_port}")
        return self._server
