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

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import NamedTuple

import grpc
from grpc import aio
from mlserver.errors import InferenceError, MLServerError
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc.converters import (
    InferTensorContentsConverter,
    ModelInferResponseConverter,
    ParametersConverter,
)
from mlserver.grpc.servicers import InferenceServicer as MLServerInferenceServicer
from mlserver.grpc.utils import to_metadata
from mlserver.types import InferenceRequest, Parameters, RequestInput, RequestOutput, TensorData
from mlserver.utils import extract_headers, insert_headers
from pydantic import ValidationError

from modelyard.mlserver_internals import GRPCInferMetrics
from modelyard.serving.auth import Auth
from modelyard.serving.dataplane import DataPlane, unexpected
from modelyard.serving.limits import RETRY_AFTER_S, InFlight
from modelyard.serving.repository import Repository
from modelyard.serving.tensors import raw_tensor

logger = logging.getLogger(__name__)

MODEL_INFER = f"/{GRPCInferMetrics.SERVICE}/ModelInfer"
# The gRPC status of each HTTP status an MLServerError carries.
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ALREADY_EXISTS,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.FAILED_PRECONDITION,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_code(error: MLServerError) -> grpc.StatusCode:
    return STATUS_CODES.get(error.status_code, grpc.StatusCode.UNKNOWN)


# The typed contents field of each datatype (FP16 travels only as raw bytes).
CONTENTS_FIELDS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}  # fmt: skip


def request_from_pb(request: pb.ModelInferRequest) -> InferenceRequest:
    """MLServer's converter, built with ``model_construct`` as it does (without going
    through pydantic's deprecated ``construct`` and its warning on every call), and
    with raw numeric contents as numpy arrays over the bytes; a 400 naming the input
    for contents that contradict each other or the datatype."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InferenceError(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
            "send one per input, in the order of the inputs"
        )
    inputs = []
    for index, tensor in enumerate(request.inputs):
        if raw:
            if tensor.HasField("contents") and tensor.contents.ListFields():
                raise InferenceError(
                    f"input '{tensor.name}' is sent both in its contents and in "
                    "raw_input_contents; send it in one of them"
                )
            data = _raw_data(tensor, raw[index])
        else:
            data = _typed_data(tensor)
        inputs.append(
            RequestInput.model_construct(
                name=tensor.name,
                shape=list(tensor.shape),
                datatype=tensor.datatype,
                parameters=_parameters(f"input '{tensor.name}'", tensor.parameters),
                data=data,
            )
        )
    payload = InferenceRequest.model_construct(
        id=request.id, parameters=_parameters("the request", request.parameters), inputs=inputs
    )
    if request.outputs:
        payload.outputs = [
            RequestOutput.model_construct(
                name=out.name, parameters=_parameters(f"output '{out.name}'", out.parameters)
            )
            for out in request.outputs
        ]
    return payload


def _parameters(where: str, parameters: Mapping[str, pb.InferParameter]) -> Parameters | None:
    try:
        return ParametersConverter.to_types(parameters)
    except ValidationError as e:
        wrong = ", ".join(
            f"{'.'.join(str(p) for p in err['loc'])} ({err['msg']})" for err in e.errors()
        )
        raise InferenceError(f"{where}: parameter {wrong}") from None


def _typed_data(tensor: pb.ModelInferRequest.InferInputTensor) -> TensorData:
    sent = [f.name for f, _ in tensor.contents.ListFields()]
    expected = CONTENTS_FIELDS.get(tensor.datatype)
    wrong = [f for f in sent if f != expected]
    if wrong:
        where = f"{expected} or raw_input_contents" if expected else "raw_input_contents"
        raise InferenceError(
            f"input '{tensor.name}' is {tensor.datatype} but is sent in {', '.join(wrong)}; "
            f"send it in {where}"
        )
    return InferTensorContentsConverter.to_types(tensor.contents)


def _raw_data(tensor: pb.ModelInferRequest.InferInputTensor, content: bytes) -> TensorData:
    return raw_tensor(tensor.name, tensor.datatype, tensor.shape, content)


class Answer(NamedTuple):
    """One ModelInfer call's outcome: a response, or a status code and its message."""

    code: grpc.StatusCode
    message: str
    response: pb.ModelInferResponse | None
    trailing: tuple[tuple[str, str | bytes], ...]


class InferenceServicer(MLServerInferenceServicer):
    """MLServer's V2 servicer over this server's data plane, with ModelInfer answered
    by `answer`, which the Go front end's socket calls too."""

    def __init__(
        self, data_plane: DataPlane, repository: Repository, metrics: GRPCInferMetrics | None
    ):
        # MLServer's servicer calls the data plane and repository by the names they know.
        super().__init__(data_plane, repository)  # type: ignore[arg-type]
        self.data_plane = data_plane
        self.metrics = metrics
        # Set only when inference calls are checked: none of its cost otherwise.
        self.auth: Auth | None = None
        # The process's budget of request bytes in flight, shared with REST.
        self.inflight: InFlight | None = None

    async def answer(
        self,
        request: pb.ModelInferRequest,
        metadata: Iterable[tuple[str, str | bytes]],
        size: int | None = None,
    ) -> Answer:
        """ModelInfer for any transport: this server's, or the Go front end's socket
        (which gives the ``size`` of the request as it came)."""
        if self.auth is not None:
            denied = self.auth.grpc_check(MODEL_INFER, metadata)
            if denied is not None:
                return Answer(denied.grpc_code, denied.message, None, ())
        inflight = self.inflight
        if inflight is not None:
            size = request.ByteSize() if size is None else size
            if not inflight.take(size):
                # gRPC's retry policies wait this long before they send the call again.
                pushback = (("grpc-retry-pushback-ms", str(RETRY_AFTER_S * 1000)),)
                return Answer(
                    grpc.StatusCode.RESOURCE_EXHAUSTED, inflight.refusal(size), None, pushback
                )
        start = time.perf_counter()
        if self.metrics is not None:
            self.metrics.started.inc()
        code = grpc.StatusCode.OK
        try:
            laned = await self.data_plane.infer_lane(request)
            if laned is not None:
                response, trailing = laned
                return Answer(code, "", response, to_metadata(trailing) if trailing else ())
            payload = request_from_pb(request)
            headers = dict(metadata)
            if headers:
                insert_headers(payload, headers)
            result = await self.data_plane.infer(
                payload=payload, name=request.model_name, version=request.model_version
            )
            trailing = extract_headers(result)
            response = ModelInferResponseConverter.from_types(
                result, use_raw=bool(request.raw_input_contents)
            )
            return Answer(code, "", response, to_metadata(trailing) if trailing else ())
        except MLServerError as e:
            code = status_code(e)
            return Answer(code, str(e), None, ())
        except Exception as e:
            code = grpc.StatusCode.INTERNAL
            return Answer(code, str(unexpected(request.model_name, request.id, e)), None, ())
        finally:
            if inflight is not None and size is not None:
                inflight.give(size)
            if self.metrics is not None:
                self.metrics.handled(code, time.perf_counter() - start)

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        # MLServer's lets a model it does not know become UNKNOWN; it is NOT_FOUND.
        try:
            ready = await self.data_plane.model_ready(request.name, request.version)
        except MLServerError as e:
            await context.abort(code=status_code(e), details=str(e))
            raise AssertionError("unreachable: context.abort raises") from None
        return pb.ModelReadyResponse(ready=ready)

    async def ModelStreamInfer(  # type: ignore[override]
        self, requests: AsyncIterator[pb.ModelInferRequest], context: aio.ServicerContext
    ) -> AsyncIterator[pb.ModelInferResponse]:
        """MLServer's, with each request read and checked as ModelInfer reads it, and an
        error's own status."""
        try:
            first = await anext(aiter(requests), None)
            if first is None:
                return
            headers = dict(context.invocation_metadata() or ())

            async def payloads() -> AsyncIterator[InferenceRequest]:
                request: pb.ModelInferRequest | None = first
                while request is not None:
                    payload = request_from_pb(request)
                    if headers:
                        insert_headers(payload, headers)
                    yield payload
                    request = await anext(aiter(requests), None)

            use_raw = bool(first.raw_input_contents)
            result = None
            async for result in self.data_plane.infer_stream(
                payloads(), first.model_name, first.model_version
            ):
                yield ModelInferResponseConverter.from_types(result, use_raw=use_raw)
            trailing = extract_headers(result) if result is not None else None
            if trailing:
                context.set_trailing_metadata(to_metadata(trailing))
        except MLServerError as e:
            await context.abort(code=status_code(e), details=str(e))

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


class AllButModelInfer(aio.ServerInterceptor):
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
