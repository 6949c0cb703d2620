"""The data plane: what a V2 call asks of this server, whichever way it came in.

REST (`rest.py`), gRPC (`grpc.py`) and the Go front end's socket (`grpc_front.py`) all
call one `DataPlane`. It finds the model, checks the request against the declared
signature, predicts (or answers from the response cache), checks the response against
the declared outputs, counts the call and tells the observers (the payload log). The
endpoints MLServer's REST app and gRPC servicer define call it under the names they
know (`live`, `ready`, `model_ready`, `metadata`, `model_metadata`, `infer`,
`infer_stream`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol, TypeVar

from mlserver.cache import LocalCache, ResponseCache
from mlserver.cloudevents import CloudEventsMiddleware
from mlserver.context import model_context
from mlserver.errors import InferenceError, MLServerError, ModelNotReady
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc.converters import ModelInferRequestConverter, ModelInferResponseConverter
from mlserver.middleware import InferenceMiddlewares
from mlserver.model import MLModel
from mlserver.settings import Settings
from mlserver.types import (
    InferenceRequest,
    InferenceResponse,
    MetadataModelResponse,
    MetadataServerResponse,
)
from mlserver.utils import generate_uuid
from prometheus_client import Counter, Gauge, Summary

from modelyard.declarations.signature import check_request, check_response, declared
from modelyard.serving import metrics
from modelyard.serving.lanes import LANE_ATTR, Lane, takes
from modelyard.serving.models import InFlight, LoadedModels
from modelyard.serving.tensors import non_finite

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from modelyard.serving.rollouts import Rollout

_T = TypeVar("_T")


class ModelFailed(MLServerError):
    """A model that raised on a request the checks let through: a 500 whose body names
    the request id to find in the server's log, never the library's exception text."""

    def __init__(self, model: str, request_id: str | None):
        super().__init__(
            f"model '{model}' failed on this request; the server log has the detail under "
            f"request id {request_id}",
            status_code=500,
        )


def model_failed(
    model: MLModel, request_id: str | None, tensors: Iterable[tuple[str, object]], error: Exception
) -> MLServerError:
    """What the client is told of an exception its model raised: a 400 naming the input
    when the request carried NaN or an infinity (which many libraries refuse), else a
    `ModelFailed`; the exception goes to the log with the request id."""
    for name, data in tensors:
        if non_finite(data):
            logger.info(
                "model '%s': request %s refused for NaN or infinity in input '%s': %s",
                model.name, request_id, name, error,
            )  # fmt: skip
            return InferenceError(
                f"model '{model.name}': input '{name}' carries NaN or an infinite value, which "
                "the model does not take; send finite numbers"
            )
    return unexpected(model.name, request_id, error)


def unexpected(model: str, request_id: str | None, error: BaseException) -> ModelFailed:
    """``error`` logged under the request's id (one made up when it has none: gRPC's is ""
    when the client sent none), and the 500 that tells the client that id."""
    request_id = request_id or generate_uuid()
    logger.error("model '%s': request %s failed", model, request_id, exc_info=error)
    return ModelFailed(model, request_id)


class Observer(Protocol):
    """Sees answered calls (the payload log): ``wants`` says whether a model's calls may
    be chosen at all, ``draw`` whether this call is, and ``log`` is given the chosen
    calls as pydantic objects (a call answered by a gRPC lane builds them only then)."""

    def wants(self, model: MLModel) -> bool: ...

    def draw(self, model: MLModel) -> bool: ...

    def log(
        self, model: MLModel, request: InferenceRequest, response: InferenceResponse
    ) -> None: ...


class _Counters(NamedTuple):
    """One model version's request metrics, their label values resolved once."""

    success: Counter
    failure: Counter
    duration: Summary
    in_flight: Gauge


class DataPlane:
    def __init__(
        self,
        settings: Settings,
        models: LoadedModels,
        process_ready: Callable[[], bool],
        grpc_listening: Callable[[], bool],
        observers: Sequence[Observer] = (),
        rollouts: dict[str, Rollout] | None = None,
    ):
        self.settings = settings
        self.models = models
        self._process_ready = process_ready
        self._grpc_listening = grpc_listening
        self._observers = list(observers)
        # Models with a candidate beside them (`rollouts.Rollouts.active`).
        self.rollouts: dict[str, Rollout] = rollouts if rollouts is not None else {}
        self._middleware = InferenceMiddlewares(CloudEventsMiddleware(settings))
        self._cache: ResponseCache | None = (
            LocalCache(size=settings.cache_size) if settings.cache_enabled else None
        )
        self._counters: dict[tuple[str, str], _Counters] = {}

    # -- health and metadata -------------------------------------------------------------
    async def live(self) -> bool:
        return True

    async def ready(self) -> bool:
        return self._process_ready()

    async def model_ready(self, name: str, version: str | None = None) -> bool:
        # A pod's readiness probe: ready for traffic on both of its ports.
        model = await self.models.get_model(name, version)
        return model.ready and self._grpc_listening()

    async def metadata(self) -> MetadataServerResponse:
        return MetadataServerResponse(
            name=self.settings.server_name,
            version=self.settings.server_version,
            extensions=self.settings.extensions,
        )

    async def model_metadata(self, name: str, version: str | None = None) -> MetadataModelResponse:
        model = await self.models.get_model(name, version)
        with model_context(model.settings):
            meta = await model.metadata()
        # V2 lists the model versions a client may ask for; MLServer puts the
        # training libraries' versions there.
        meta.versions = [model.version] if model.version else []
        return meta

    # -- inference -----------------------------------------------------------------------
    async def infer(
        self, payload: InferenceRequest, name: str, version: str | None = None
    ) -> InferenceResponse:
        cache_key = payload.model_dump_json() if self._cache is not None else None

        async def answer(model: MLModel) -> InferenceResponse:
            prepared = self._prepare(payload, model)
            try:
                if cache_key is not None and model.settings.cache_enabled is not False:
                    response = await self._cached_predict(model, prepared, cache_key)
                else:
                    response = await model.predict(prepared)
            except MLServerError:
                raise
            except Exception as e:
                raise model_failed(model, prepared.id, _tensors(prepared), e) from e
            response.id = prepared.id
            self._middleware.response_middleware(response, model.settings)
            _, outputs = declared(model)
            if outputs:
                check_response(model.name, outputs, prepared, response)
            for observer in self._observers:
                if observer.draw(model):
                    observer.log(model, prepared, response)  # queued: never waits
            return response

        rollout = self.rollouts.get(name)
        if rollout is None or version:
            return await self._counted(name, version, answer)
        return await rollout.infer(payload, lambda model: self._counted(name, None, answer, model))

    async def infer_lane(
        self, request: pb.ModelInferRequest
    ) -> tuple[pb.ModelInferResponse, dict[str, str] | None] | None:
        """A gRPC call answered by its model's lane (`lanes.py`), counted as `infer`
        counts; None when the call or the model has none."""
        if not takes(request) or request.model_name in self.rollouts:
            return None  # a model with a candidate: `infer` routes and compares
        model = self.models.find(request.model_name, request.model_version)
        lane: Lane | None = getattr(model, LANE_ATTR, None)
        if model is None or lane is None:
            return None
        if self._cache is not None and model.settings.cache_enabled is not False:
            return None
        # A call the payload log samples is answered by the lane too, and only then
        # converted to the objects the log keeps.
        chosen = [o for o in self._observers if o.wants(model) and o.draw(model)]
        if chosen and not request.id:
            request.id = generate_uuid()  # the id the client sends labels with

        async def answer(_: MLModel) -> tuple[pb.ModelInferResponse, dict[str, str] | None]:
            try:
                response, headers = lane.answer(request, self._middleware)
            except MLServerError:
                raise
            except Exception as e:
                raise model_failed(model, request.id, lane.tensors(request), e) from e
            if chosen:
                sent = ModelInferRequestConverter.to_types(request)
                answered = ModelInferResponseConverter.to_types(response)
                for observer in chosen:
                    observer.log(model, sent, answered)
            return response, headers

        return await self._counted(request.model_name, request.model_version, answer, model)

    async def infer_stream(
        self, payloads: AsyncIterator[InferenceRequest], name: str, version: str | None = None
    ) -> AsyncIterator[InferenceResponse]:
        async with self._streaming(name, version) as model:
            first: InferenceRequest | None = None
            async for payload in payloads:
                first = payload
                break
            if first is None:
                return
            first = self._prepare(first, model)

            async def prepared() -> AsyncIterator[InferenceRequest]:
                assert first is not None
                yield first
                async for payload in payloads:
                    payload.id = first.id
                    yield self._prepare(payload, model)

            try:
                async for response in model.predict_stream(prepared()):
                    response.id = first.id
                    self._middleware.response_middleware(response, model.settings)
                    yield response
            except MLServerError:
                raise
            except Exception as e:
                raise model_failed(model, first.id, _tensors(first), e) from e

    # -- the parts -----------------------------------------------------------------------
    def _prepare(self, payload: InferenceRequest, model: MLModel) -> InferenceRequest:
        inputs, _ = declared(model)
        check_request(model.name, inputs, payload)
        if payload.id is None:
            payload.id = generate_uuid()
        self._middleware.request_middleware(payload, model.settings)
        return payload

    def counters(self, name: str, version: str | None) -> _Counters:
        """The request metrics of the model a call names; one set for every name or
        version this server does not serve."""
        model = self.models.find(name, version)
        key = (name, model.version or "") if model is not None else (metrics.UNKNOWN, "")
        counters = self._counters.get(key)
        if counters is None:
            model_label, version_label = key
            counters = self._counters[key] = _Counters(
                metrics.INFER_SUCCESS.labels(model=model_label, version=version_label),
                metrics.INFER_FAILURE.labels(model=model_label, version=version_label),
                metrics.INFER_DURATION.labels(model=model_label, version=version_label),
                metrics.IN_FLIGHT.labels(model=model_label),
            )
        return counters

    async def _counted(
        self,
        name: str,
        version: str | None,
        answer: Callable[[MLModel], Awaitable[_T]],
        model: MLModel | None = None,
    ) -> _T:
        """``answer(model)`` with the model's request metrics and its requests in
        flight; a response that breaks the declared outputs counts as a failure."""
        async with _Call(self, name, version, model) as found:
            return await answer(found)

    def _streaming(self, name: str, version: str | None) -> _Call:
        return _Call(self, name, version, None)

    async def _cached_predict(
        self, model: MLModel, payload: InferenceRequest, cache_key: str
    ) -> InferenceResponse:
        assert self._cache is not None
        cached = await self._cache.lookup(cache_key)
        if cached != "":
            return InferenceResponse.model_validate_json(cached)
        response = await model.predict(payload)
        # MLServer, too, answers even when the cache cannot take the response.
        await self._cache.insert(cache_key, response.model_dump_json())
        return response


def _tensors(payload: InferenceRequest) -> list[tuple[str, object]]:
    return [(t.name, t.data) for t in payload.inputs]


class _Call:
    """One call's accounting: the model found and ready, its metrics, its requests in
    flight and MLServer's model context (a plain class: a generator-based context
    manager costs more than a one-row prediction)."""

    __slots__ = ("_context", "_counters", "_in_flight", "_start", "model", "name", "plane",
                 "version")  # fmt: skip

    def __init__(self, plane: DataPlane, name: str, version: str | None, model: MLModel | None):
        self.plane = plane
        self.name = name
        self.version = version
        self.model = model

    async def __aenter__(self) -> MLModel:
        self._counters = self.plane.counters(self.name, self.version)
        self._start = time.perf_counter()
        try:
            model = self.model
            if model is None:
                model = await self.plane.models.get_model(self.name, self.version)
            if not model.ready:
                raise ModelNotReady(self.name, self.version)
        except Exception:
            self._done(Exception)
            raise
        self._counters.in_flight.inc()
        self._context = model_context(model.settings)
        self._context.__enter__()
        self._in_flight = InFlight(model)
        self._in_flight.__enter__()
        return model

    async def __aexit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        self._in_flight.__exit__()
        self._context.__exit__(kind, *exc)
        self._counters.in_flight.dec()
        self._done(kind)

    def _done(self, kind: type[BaseException] | None) -> None:
        """Count the call: answered, failed, or (cancelled) neither; its duration always."""
        if kind is None:
            self._counters.success.inc()
        elif issubclass(kind, Exception):
            self._counters.failure.inc()
        self._counters.duration.observe(time.perf_counter() - self._start)
