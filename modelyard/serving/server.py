"""`modelyard serve`: MLServer in-process, fed by the live registry.

MLServer runs in this process with inference inline (no worker pool: light models
answer faster without the inter-process hop) and the registry loads models through
its model registry. Readiness is honest: `/v2/health/ready` stays false until every
model folder has been tried and the gRPC port takes calls, where MLServer alone says
ready with nothing loaded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TypeVar

from fastapi.responses import ORJSONResponse
from mlserver import MLServer
from mlserver.context import model_context
from mlserver.errors import MLServerError, ModelNotReady
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.handlers import DataPlane
from mlserver.metrics import MetricsServer
from mlserver.model import MLModel
from mlserver.rest.server import _NoSignalServer
from mlserver.settings import Settings
from mlserver.types import InferenceRequest, InferenceResponse, MetadataModelResponse
from prometheus_client import Counter, Gauge, Histogram

from modelyard import __version__
from modelyard.serving import metrics
from modelyard.serving.rest import FastInfer
from modelyard.serving.grpc_front import GRPCFront, front_binary
from modelyard.serving.grpc import FastGRPCServer
from modelyard.serving.lanes import LANE_ATTR, Lane, takes
from modelyard.serving.processes import (
    PROMETHEUS_DIR_ENV,
    mark_ready,
    process_index,
    reuse_port_socket,
    siblings_ready,
)
from modelyard.quality.exporter import QualityExporter
from modelyard.quality.payloads import PAYLOADS
from modelyard.serving.registry import INFLIGHT_ATTR, Registry, SwappingModelRegistry
from modelyard.serving.signature import check_request, check_response, declared

logger = logging.getLogger("modelyard.serving.server")
_T = TypeVar("_T")

STATUS_PATH = "/modelyard/status"


@dataclass(frozen=True)
class ServeOptions:
    directory: Path
    host: str = "127.0.0.1"
    http_port: int = 8080
    grpc_port: int = 8081
    metrics_port: int = 8082
    workers: int = 0
    watch: bool = True
    debug: bool = False
    # One limit for both protocols: MLServer leaves gRPC at its 4 MB default and
    # REST unbounded, so a large request worked over one and not the other.
    max_message_mb: int = 64

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * 1024 * 1024


def mlserver_settings(opts: ServeOptions) -> Settings:
    return Settings(
        debug=opts.debug,
        host=opts.host,
        http_port=opts.http_port,
        grpc_port=opts.grpc_port,
        metrics_port=opts.metrics_port,
        parallel_workers=opts.workers,
        model_repository_root=str(opts.directory),
        load_models_at_startup=False,
        server_name="modelyard",
        server_version=__version__,
        grpc_max_message_length=opts.max_message_bytes,
        model_repository_implementation="modelyard.serving.registry.FolderRepository",
    )


class _InFlight:
    """Counts a request in flight on its model object, so a swapped-out version is
    unloaded only once the requests it already took have been answered; and per model
    name, for autoscaling on requests in flight (both protocols)."""

    __slots__ = ("gauge", "model")

    def __init__(self, model: MLModel, gauge: Gauge):
        self.model = model
        self.gauge = gauge

    def __enter__(self) -> None:
        setattr(self.model, INFLIGHT_ATTR, getattr(self.model, INFLIGHT_ATTR, 0) + 1)
        self.gauge.inc()

    def __exit__(self, *exc: object) -> None:
        self.gauge.dec()
        setattr(self.model, INFLIGHT_ATTR, getattr(self.model, INFLIGHT_ATTR) - 1)


class _Counters(NamedTuple):
    """One model's request metrics, with their label values resolved once."""

    success: Counter
    failure: Counter
    duration: Histogram
    in_flight: Gauge


class _DataPlane(DataPlane):
    _process_ready: Callable[[], bool]
    _grpc_listening: Callable[[], bool]
    _counters: dict[tuple[str, str | None], _Counters]

    async def ready(self) -> bool:
        return self._process_ready() and await super().ready() and siblings_ready()

    async def model_ready(self, name: str, version: str | None = None) -> bool:
        # A pod's readiness probe: ready for traffic on both of its ports.
        return self._grpc_listening() and await super().model_ready(name, version)

    async def model_metadata(self, name: str, version: str | None = None) -> MetadataModelResponse:
        # V2 lists the model versions a client may ask for; MLServer puts the
        # training libraries' versions there.
        meta = await super().model_metadata(name, version)
        model = await self._model_registry.get_model(name, version)
        meta.versions = [model.version] if model.version else []
        return meta

    def _prepare_payload(self, payload: InferenceRequest, model: MLModel) -> InferenceRequest:
        inputs, _ = declared(model)
        if inputs:
            check_request(model.name, inputs, payload)
        return super()._prepare_payload(payload, model)

    def _model_counters(self, name: str, version: str | None) -> _Counters:
        counters = self._counters.get((name, version))
        if counters is None:
            counters = self._counters[(name, version)] = _Counters(
                self._ModelInferRequestSuccess.labels(model=name, version=version),
                self._ModelInferRequestFailure.labels(model=name, version=version),
                self._ModelInferRequestDuration.labels(model=name, version=version),
                metrics.IN_FLIGHT.labels(model=name),
            )
        return counters

    async def infer(
        self, payload: InferenceRequest, name: str, version: str | None = None
    ) -> InferenceResponse:
        # MLServer's DataPlane.infer, with the same metrics, context, middlewares and
        # response cache; its two nested context managers and per-call label lookups
        # were a fifth of the data plane's own time on a one-row request.
        cache_key = payload.model_dump_json() if self._response_cache is not None else None

        async def answer(model: MLModel) -> InferenceResponse:
            prepared = self._prepare_payload(payload, model)
            if cache_key is not None and model.settings.cache_enabled is not False:
                response = await self._cached_predict(model, prepared, cache_key)
            else:
                response = await model.predict(prepared)
            response.id = prepared.id
            self._inference_middleware.response_middleware(response, model.settings)
            _, outputs = declared(model)
            if outputs:
                check_response(name, outputs, prepared, response)
            PAYLOADS.record(model, prepared, response)  # sampled, queued: never waits
            return response

        return await self._counted(name, version, answer)

    async def infer_lane(
        self, request: pb.ModelInferRequest
    ) -> tuple[pb.ModelInferResponse, dict[str, str] | None] | None:
        """A gRPC call answered by its model's lane (`modelyard.serving.lanes`), counted as
        `infer` counts; None when the call or the model has none."""
        if not takes(request):
            return None
        name, version = request.model_name, request.model_version  # as the servicer passes them
        try:
            model = await self._model_registry.get_model(name, version)
        except MLServerError:
            return None  # `infer` gives the error, and counts it
        lane: Lane | None = getattr(model, LANE_ATTR, None)
        if lane is None or PAYLOADS.samples(model):
            return None
        if self._response_cache is not None and model.settings.cache_enabled is not False:
            return None

        async def answer(_: MLModel) -> tuple[pb.ModelInferResponse, dict[str, str] | None]:
            return lane.answer(request, self._inference_middleware)

        return await self._counted(name, version, answer, model)

    async def _counted(
        self,
        name: str,
        version: str | None,
        answer: Callable[[MLModel], Awaitable[_T]],
        model: MLModel | None = None,
    ) -> _T:
        """``answer(model)`` with the model's request metrics and its requests in
        flight; a response that breaks the declared outputs counts as a failure."""
        counters = self._model_counters(name, version)
        start = time.perf_counter()
        try:
            if model is None:
                model = await self._model_registry.get_model(name, version)
            if not model.ready:
                raise ModelNotReady(name, version)
            with model_context(model.settings), _InFlight(model, counters.in_flight):
                result = await answer(model)
        except Exception:
            counters.failure.inc()
            raise
        else:
            counters.success.inc()
        finally:
            counters.duration.observe(time.perf_counter() - start)
        return result

    async def _cached_predict(
        self, model: MLModel, payload: InferenceRequest, cache_key: str
    ) -> InferenceResponse:
        assert self._response_cache is not None
        cached = await self._response_cache.lookup(cache_key)
        if cached != "":
            return InferenceResponse.model_validate_json(cached)
        response = await model.predict(payload)
        # MLServer, too, answers even when the cache cannot take the response.
        await self._response_cache.insert(cache_key, response.model_dump_json())
        return response

    @asynccontextmanager
    async def _infer_contextmanager(
        self, name: str, version: str | None = None
    ) -> AsyncIterator[MLModel]:
        # Streams (infer_stream) still go through MLServer's context manager.
        async with super()._infer_contextmanager(name, version) as model:
            with _InFlight(model, self._model_counters(name, version).in_flight):
                yield model


class ModelyardServer(MLServer):
    """MLServer with the live registry and modelyard's readiness and status."""

    def __init__(self, opts: ServeOptions):
        self.opts = opts
        super().__init__(mlserver_settings(opts))

    def _create_model_registry(self) -> SwappingModelRegistry:
        base = super()._create_model_registry()
        models = SwappingModelRegistry(
            on_model_load=base._on_model_load,
            on_model_reload=base._on_model_reload,
            on_model_unload=base._on_model_unload,
            model_initialiser=base._model_initialiser,
        )
        self.registry = Registry(self.opts.directory, models)
        return models

    def _create_servers(self) -> None:
        # MLServer has built its DataPlane (and registered its Prometheus metrics,
        # which cannot be registered twice): extend that object rather than make another.
        self._data_plane.__class__ = _DataPlane
        self._data_plane._process_ready = self._process_ready
        self._data_plane._grpc_listening = lambda: self._grpc_server.listening
        self._data_plane._counters = {}
        super()._create_servers()
        self._grpc_server.__class__ = FastGRPCServer
        binary = front_binary()
        if binary is not None:
            self._grpc_server.front = GRPCFront(binary)
        app = self._rest_server._app
        app.add_api_route(STATUS_PATH, self._status, methods=["GET"], response_class=ORJSONResponse)
        self._rest_server._app = FastInfer(app, self._data_plane, self.opts.max_message_bytes)

    def _process_ready(self) -> bool:
        """Every folder of this process has been tried and its gRPC port takes calls
        (its HTTP port does, or nobody could ask)."""
        return self.registry.ready() and self._grpc_server.listening

    async def _status(self) -> dict:
        return {
            "ready": self._process_ready() and siblings_ready(),
            "process": process_index() or 0,
            "pid": os.getpid(),
            "directory": str(self.opts.directory),
            "models": [s.as_dict() for s in self.registry.statuses()],
        }

    def _add_signal_handlers(self) -> None:
        loop = asyncio.get_event_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
            loop.add_signal_handler(sig, lambda s=sig: asyncio.create_task(self.stop(sig=s)))

    async def start(self, models_settings: list | None = None) -> None:  # type: ignore[override]
        self._stop_watch = asyncio.Event()
        index = process_index()
        servers = [self._start_rest(index), self._grpc_server.start()]
        if self._metrics_server and index in (None, 0):
            if index == 0:
                # One of several processes: the first serves the metrics of all.
                self._metrics_server = MetricsServer(
                    self._settings.model_copy(
                        update={
                            "parallel_workers": 1,
                            "metrics_dir": os.environ[PROMETHEUS_DIR_ENV],
                        }
                    )
                )
            servers.append(self._metrics_server.start())
        else:
            self._metrics_server = None  # not started here, so nothing to stop
        servers_task = asyncio.gather(*servers)
        await self.registry.sync()
        tasks = [servers_task]
        if index is not None:
            tasks.append(asyncio.ensure_future(self._publish_readiness()))
        if self.opts.watch:
            tasks.append(asyncio.ensure_future(self.registry.watch(self._stop_watch)))
        if self._metrics_server is not None:  # quality and batch gauges, from the stores
            exporter = QualityExporter(self._model_registry)
            tasks.append(asyncio.ensure_future(exporter.run(self._stop_watch)))
        await asyncio.gather(*tasks)

    async def _publish_readiness(self) -> None:
        published = None
        while not self._stop_watch.is_set():
            ready = self._process_ready()
            if ready != published:
                mark_ready(ready)
                published = ready
            await asyncio.sleep(0.1)

    async def _start_rest(self, index: int | None) -> None:
        if index is None:
            return await self._rest_server.start()
        # gRPC binds with SO_REUSEPORT by default; uvicorn needs the socket given.
        rest = self._rest_server
        rest._server = _NoSignalServer(rest._get_config())
        sock = reuse_port_socket(self._settings.host, self._settings.http_port)
        logger.info("process %d: HTTP server on port %d", index, self._settings.http_port)
        await rest._server.serve(sockets=[sock])

    async def stop(self, sig: int | None = None) -> None:
        self._stop_watch.set()
        await super().stop(sig)


async def serve(opts: ServeOptions) -> None:
    server = ModelyardServer(opts)
    await server.start()
