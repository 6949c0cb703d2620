"""V2 gRPC inference without MLServer's per-call layers, as `rest` does for REST.

MLServer wraps every call in a Prometheus interceptor (a coroutine around the
handler and a metrics wrapper per call) and an error decorator that logs each bad
request with its traceback. Here `ModelInfer` is answered by the same data plane,
the same converters and the same errors, and records the interceptor's own metrics
(`grpc_server_started_total`, `grpc_server_handled_total`, `grpc_server_handling_seconds`)
itself, through label values resolved once: dashboards and alerts see no difference.
The interceptor still measures every other method.

Numeric tensors sent as raw bytes (as tritonclient sends them) are read as numpy arrays
over those bytes, where MLServer unpacks them into a Python list of floats that its
numpy codec then packs into an array again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

import grpc
import numpy as np
from grpc import aio
from mlserver.errors import InferenceError, MLServerError
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc.converters import (
    InferTensorContentsConverter,
    ModelInferResponseConverter,
    ParametersConverter,
)
from mlserver.grpc.dataplane_pb2_grpc import add_GRPCInferenceServiceServicer_to_server
from mlserver.grpc.interceptors import LoggingInterceptor, PromServerInterceptor
from mlserver.grpc.model_repository import ModelRepositoryServicer
from mlserver.grpc.model_repository_pb2_grpc import add_ModelRepositoryServiceServicer_to_server
from mlserver.grpc.server import GRPCServer
from mlserver.grpc.servicers import InferenceServicer
from mlserver.grpc.utils import _grpc_status_code, to_metadata
from mlserver.raw import unpack
from mlserver.types import InferenceRequest, RequestInput, RequestOutput, TensorData
from mlserver.utils import extract_headers, insert_headers

if TYPE_CHECKING:
    from modelyard.serving.grpc_front import GRPCFront

logger = logging.getLogger("modelyard.serving.grpc")

SERVICE = "inference.GRPCInferenceService"
MODEL_INFER = f"/{SERVICE}/ModelInfer"
# V2's raw tensor contents are little-endian, row-major.
RAW_DTYPES = {
    name: np.dtype(code).newbyteorder("<")
    for name, code in (
        ("BOOL", "bool"), ("UINT8", "uint8"), ("UINT16", "uint16"), ("UINT32", "uint32"),
        ("UINT64", "uint64"), ("INT8", "int8"), ("INT16", "int16"), ("INT32", "int32"),
        ("INT64", "int64"), ("FP16", "float16"), ("FP32", "float32"), ("FP64", "float64"),
    )
}  # fmt: skip


def request_from_pb(request: pb.ModelInferRequest) -> InferenceRequest:
    """MLServer's converter, built with ``model_construct`` as it does (without going
    through pydantic's deprecated ``construct`` and its warning on every call), and
    with raw numeric contents as numpy arrays over the bytes."""
    raw = iter(request.raw_input_contents) if request.raw_input_contents else None
    inputs = []
    for tensor in request.inputs:
        if raw is None or tensor.HasField("contents"):  # sent in the typed contents fields
            data = InferTensorContentsConverter.to_types(tensor.contents)
        else:
            data = _raw_data(tensor, next(raw, None))
        inputs.append(
            RequestInput.model_construct(
                name=tensor.name,
                shape=list(tensor.shape),
                datatype=tensor.datatype,
                parameters=ParametersConverter.to_types(tensor.parameters),
                data=data,
            )
        )
    payload = InferenceRequest.model_construct(
        id=request.id, parameters=ParametersConverter.to_types(request.parameters), inputs=inputs
    )
    if request.outputs:
        payload.outputs = [
            RequestOutput.model_construct(
                name=out.name, parameters=ParametersConverter.to_types(out.parameters)
            )
            for out in request.outputs
        ]
    return payload


def _raw_data(tensor: pb.ModelInferRequest.InferInputTensor, content: bytes | None) -> TensorData:
    if content is None:
        raise InferenceError(
            f"input '{tensor.name}' has no contents: send its data in its contents or "
            "as one of raw_input_contents, in the order of the inputs"
        )
    dtype = RAW_DTYPES.get(tensor.datatype)
    if dtype is None:  # BYTES: length-prefixed elements
        return TensorData(unpack(tensor, content))
    if len(content) % dtype.itemsize:
        raise InferenceError(
            f"input '{tensor.name}': {len(content)} raw bytes are not a whole number of "
            f"{tensor.datatype} values ({dtype.itemsize} bytes each)"
        )
    return TensorData.model_construct(root=np.frombuffer(content, dtype))


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


class Answer(NamedTuple):
    """One ModelInfer call's outcome: a response, or a status code and its message."""

    code: grpc.StatusCode
    message: str
    response: pb.ModelInferResponse | None
    trailing: tuple[tuple[str, str | bytes], ...]


class FastInferenceServicer(InferenceServicer):
    metrics: InferMetrics | None = None

    async def answer(
        self, request: pb.ModelInferRequest, metadata: Iterable[tuple[str, str | bytes]]
    ) -> Answer:
        """ModelInfer for any transport: this server's, or the Go front end's socket."""
        start = time.perf_counter()
        if self.metrics is not None:
            self.metrics.started.inc()
        code = grpc.StatusCode.OK
        try:
            laned = await self._data_plane.infer_lane(request)
            if laned is not None:
                response, trailing = laned
                return Answer(code, "", response, to_metadata(trailing) if trailing else ())
            payload = request_from_pb(request)
            headers = dict(metadata)
            if headers:
                insert_headers(payload, headers)
            result = await self._data_plane.infer(
                payload=payload, name=request.model_name, version=request.model_version
            )
            trailing = extract_headers(result)
            response = ModelInferResponseConverter.from_types(
                result, use_raw=bool(request.raw_input_contents)
            )
            return Answer(code, "", response, to_metadata(trailing) if trailing else ())
        except MLServerError as e:
            code = _grpc_status_code(e)
            return Answer(code, str(e), None, ())
        except Exception as e:
            logger.exception("model '%s': inference failed", request.model_name)
            code = grpc.StatusCode.INTERNAL
            return Answer(code, f"{type(e).__name__}: {e}", None, ())
        finally:
            if self.metrics is not None:
                self.metrics.handled(code, time.perf_counter() - start)

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: aio.ServicerContext
    ) -> pb.ModelInferResponse:
        answer = await self.answer(request, context.invocation_metadata() or ())
        if answer.trailing:
            context.set_trailing_metadata(answer.trailing)
        if answer.response is None:
            await context.abort(code=answer.code, details=answer.message)
            raise AssertionError("unreachable: context.abort raises")
        return answer.response


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
    """MLServer's gRPC server with `FastInferenceServicer` (same options and services),
    on the gRPC port or, behind the Go front end (`front`), on a Unix socket."""

    front: GRPCFront | None = None
    _listening = False

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
        self._server.add_insecure_port(self.front.backend_address if self.front else self.listen)
        return self._server

    @property
    def listen(self) -> str:
        """The gRPC port's address."""
        return f"{self._settings.host}:{self._settings.grpc_port}"

    @property
    def listening(self) -> bool:
        """Whether the gRPC port takes calls: readiness waits for it."""
        return self.front.listening if self.front is not None else self._listening

    async def start(self) -> None:
        if self.front is None:
            self._create_server()
            await self._server.start()
            self._listening = True
            logger.info("gRPC on %s", self.listen)
            return await self._server.wait_for_termination()
        # Started before gRPC's own threads, whose fork handlers would log a warning.
        max_bytes = self._settings.grpc_max_message_length
        assert max_bytes is not None, "modelyard's settings always bound it"
        await self.front.start(self.listen, max_bytes, lambda: self._inference_servicer)
        self._create_server()
        await self._server.start()
        await self.front.open()
        await asyncio.gather(self._server.wait_for_termination(), self.front.supervise())

    async def stop(self, sig: int | None = None) -> None:
        if self.front is not None:  # the port first: no new call reaches a closing server
            await self.front.stop()
        if hasattr(self, "_server"):  # not when stopped while it started
            await super().stop(sig)
