"""`modelyard serve`: one server process, assembled.

The live registry loads the model folders into `LoadedModels`; one `DataPlane`
answers every V2 call, whichever port it came in on: REST (MLServer's FastAPI app,
with inference answered first by `RestInfer`), gRPC (`GRPCServer`, behind the Go
front end when it is installed) and, in the first process, the metrics port.

A process that starts again beside serving siblings (one that died and was restarted)
takes its REST and gRPC ports only once every folder has been tried and it serves the
model versions they serve, so no connection reaches a process still loading. At the
server's first start, the ports answer while the models load (liveness probes pass).
Readiness is honest: `/v2/health/ready` stays false until every process of the server
has served once, and while a running process's gRPC port does not take calls.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlserver.batching import load_batching
from mlserver.model import MLModel
from mlserver.parallel import InferencePoolRegistry
from mlserver.registry import model_initialiser
from mlserver.settings import ModelSettings, Settings

from modelyard import __version__
from modelyard.imports import ImportTurnExecutor
from modelyard.mlserver_internals import registry_pools
from modelyard.quality.exporter import QualityExporter
from modelyard.quality.payloads import PAYLOADS
from modelyard.serving.auth import Auth, AuthOptions, Guarded, secure_http
from modelyard.serving.dataplane import DataPlane
from modelyard.serving.environments import EnvironmentPools, WorkerRestarts
from modelyard.serving.environments import initialiser as env_initialiser
from modelyard.serving.grpc_front import GRPCFront, front_binary
from modelyard.serving.grpc_server import GRPCServer
from modelyard.serving.heavy import Decoder
from modelyard.serving.limits import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MAX_INFLIGHT_MB,
    DEFAULT_SHUTDOWN_GRACE_S,
    DrainingServer,
    InFlight,
    Limits,
    rest_config,
)
from modelyard.serving.listeners import bind_when_free
from modelyard.serving.metrics import MetricsServer
from modelyard.serving.models import LoadedModels, ModelHook
from modelyard.serving.registry import Registry
from modelyard.serving.repository import Repository
from modelyard.serving.rest import RestInfer, add_custom_handlers, remove_custom_handlers, rest_app
from modelyard.serving.rollouts import Rollouts, add_rollout_routes
from modelyard.serving.siblings import Siblings

logger = logging.getLogger(__name__)

STATUS_PATH = "/modelyard/status"
# How long a process that starts beside serving siblings waits for the model versions
# it loaded to be theirs (a folder changed meanwhile) before it serves anyway.
AGREE_TIMEOUT_S = 60.0
# How often a process publishes its state and applies its siblings' repository calls.
FOLLOW_INTERVAL_S = 0.1
# How long REST waits for the gRPC port to open before it opens anyway (readiness
# stays false until gRPC takes calls).
GRPC_START_S = 10.0
# How long the parts of a stopping process may take beyond its ports' grace period
# before they are cancelled.
STOP_MARGIN_S = 2.0


@dataclass(frozen=True)
class ServeOptions:
    directory: Path
    host: str = "127.0.0.1"
    http_port: int = 8080
    grpc_port: int = 8081
    metrics_port: int = 8082
    workers: int = 0
    watch: bool = True
    # Poll MLFLOW_TRACKING_URI for the registry URIs served (`registry_uris.py`).
    watch_registry: bool = False
    registry_poll_s: float = 30.0
    debug: bool = False
    # One limit for both protocols: MLServer leaves gRPC at its 4 MB default and
    # REST unbounded, so a large request worked over one and not the other.
    max_message_mb: int = 64
    # Request bodies in flight in one process, REST and gRPC together (`limits.InFlight`).
    max_inflight_mb: int = DEFAULT_MAX_INFLIGHT_MB
    # gRPC metadata (headers) of one call, as plain MLServer's gRPC server allows.
    max_metadata_kb: int = 16
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    shutdown_grace_s: float = DEFAULT_SHUTDOWN_GRACE_S
    # Tokens, client certificates and TLS (`auth.py`).
    auth: AuthOptions = field(default_factory=AuthOptions)
    # Candidates served by another server, by model name (`rollouts.RemoteCandidate`).
    rollout_candidates: dict[str, str] = field(default_factory=dict)

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * 1024 * 1024

    @property
    def limits(self) -> Limits:
        return Limits(
            self.max_message_bytes,
            self.header_timeout_s,
            self.body_timeout_s,
            self.idle_timeout_s,
            self.shutdown_grace_s,
        )


def mlserver_settings(opts: ServeOptions) -> Settings:
    """The server settings MLServer's parts read (its REST app, middleware, pool)."""
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
    )


class Server:
    """One process of `modelyard serve`."""

    def __init__(self, opts: ServeOptions):
        self.opts = opts
        self.settings = mlserver_settings(opts)
        self.siblings = Siblings.from_env()
        self.auth = Auth.load(opts.auth)
        self._stop = asyncio.Event()
        self._serving = False  # the REST and gRPC ports are taken

        on_load: list[ModelHook] = [self._add_handlers, load_batching]
        on_unload: list[ModelHook] = [self._remove_handlers]
        initialise: Callable[[ModelSettings], MLModel] | None = None
        self._pool: InferencePoolRegistry | None = None
        if opts.workers:
            # Inference in worker processes, through MLServer's pool of them.
            self._pool = InferencePoolRegistry(self.settings)
            registry = self._pool
            # Its dead workers restarted by us (MLServer's own handler never runs here).
            restarts = WorkerRestarts(lambda: registry_pools(registry), chain=False)
            on_load.insert(0, restarts.load_model)
            on_load.insert(0, self._pool.load_model)
            on_unload.insert(0, self._pool.unload_model)
            initialise = self._pool.model_initialiser
        # A model on packages of its own is answered by a worker on its environment
        # (MLServer's pool does so itself when there are workers); the others in process.
        self._envs = None if opts.workers else EnvironmentPools(self.settings)
        if self._envs is not None:
            on_load.insert(0, self._envs.load_model)
            on_unload.insert(0, self._envs.unload_model)
        initialise = env_initialiser(initialise or model_initialiser)
        self.models = LoadedModels(on_load, on_unload, initialise)
        self.rollouts = Rollouts(self.models, self.siblings, opts.rollout_candidates)
        self.registry = Registry(opts.directory, self.models, self.rollouts)
        self.repository = Repository(self.registry, self.siblings)
        self.rollouts.act = self.repository.act
        self.data_plane = DataPlane(
            self.settings,
            self.models,
            process_ready=self.ready,
            grpc_listening=lambda: self.grpc.listening,
            observers=[PAYLOADS],
            rollouts=self.rollouts.active,
        )
        self.app = rest_app(
            self.settings, self.data_plane, self.repository, {STATUS_PATH: self.status}
        )
        add_rollout_routes(self.app, self.rollouts, self.repository.act)
        # Every path but inference's (the repository API's admin token among them).
        self.app.add_middleware(Guarded, auth=self.auth)
        binary = front_binary()
        self.grpc = GRPCServer(
            opts.host,
            opts.grpc_port,
            opts.max_message_bytes,
            opts.max_metadata_kb * 1024,
            self.data_plane,
            self.repository,
            GRPCFront(binary, opts.auth.front_args()) if binary is not None else None,
            debug=opts.debug,
            auth=self.auth,
            tls=opts.auth,
        )
        # One process serves the metrics of all.
        first = self.siblings.index in (None, 0)
        self.metrics = (
            MetricsServer(opts.host, opts.metrics_port, self.auth, opts.auth) if first else None
        )
        self._rest: DrainingServer | None = None
        # Large REST bodies parsed off the event loop (`heavy.py`).
        self.decoder = Decoder()
        # One budget of request bytes in flight for both ports.
        self.inflight = InFlight(opts.max_inflight_mb * 1024 * 1024)
        self.rollouts.busy = self.inflight.busy
        self.grpc.servicer.inflight = self.inflight

    async def _add_handlers(self, model: MLModel) -> MLModel:
        return await add_custom_handlers(self.app, model)

    async def _remove_handlers(self, model: MLModel) -> MLModel:
        return await remove_custom_handlers(self.app, model)

    # -- readiness and status ----------------------------------------------------------
    def process_ready(self) -> bool:
        """Every folder of this process has been tried and it takes calls on both ports."""
        return self._serving and self.registry.ready() and self.grpc.listening

    def ready(self) -> bool:
        return self.process_ready() and self.siblings.all_ready()

    async def status(self) -> dict[str, Any]:
        processes = [
            {"index": i, "ready": bool(p and p["ready"]), "pid": p and p["pid"],
             "versions": p["versions"] if p else {}}
            for i, p in enumerate(self.siblings.processes())
        ]  # fmt: skip
        return {
            "ready": self.ready(),
            "process": self.siblings.index or 0,
            "pid": os.getpid(),
            "directory": str(self.opts.directory),
            "models": [s.as_dict() for s in self.registry.statuses()],
            "processes": processes,
            # Models whose worker died and is being started again.
            "workers_restarting": (
                self._envs.models_down(await self.models.get_models()) if self._envs else []
            ),
        }

    # -- running -----------------------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        # What a model's load hands the default executor imports in its turn too.
        loop.set_default_executor(ImportTurnExecutor(thread_name_prefix="modelyard"))
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
            loop.add_signal_handler(sig, self._stop.set)
        tasks: list[asyncio.Task[Any]] = []

        def start(coro: Awaitable[Any]) -> None:
            tasks.append(asyncio.ensure_future(coro))

        if self.metrics is not None:
            start(self.metrics.serve())
        self.repository.replay()  # models unloaded through the API stay unloaded
        if self.siblings.others_versions():
            # Starting again beside processes that serve: take no connection until this
            # one serves what they do.
            await self.registry.sync()
            await self._agree_with_siblings()
            await self._take_ports(start)
        else:
            # The server's first start: the ports answer (liveness, readiness false)
            # while the models load.
            await self._take_ports(start)
            await self.registry.sync()
        if self.opts.watch:
            start(self.registry.watch(self._stop))
        if self.opts.watch_registry:
            start(self.registry.follow_registry(self._stop, self.opts.registry_poll_s))
        start(self._follow_siblings())
        start(self.rollouts.run(self._stop))
        if self.metrics is not None:  # quality and batch gauges, from the stores
            start(QualityExporter(self.models).run(self._stop))
        stopped = asyncio.ensure_future(self._stop.wait())
        done, _ = await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopped and task.exception() is not None:
                logger.error("a part of the server stopped: %r", task.exception())
        await self.stop()
        _, pending = await asyncio.wait(tasks, timeout=self.opts.shutdown_grace_s + STOP_MARGIN_S)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _take_ports(self, start: Callable[[Awaitable[Any]], None]) -> None:
        """gRPC first, then REST once gRPC takes calls: a readiness probe that reaches
        this process over REST never finds its gRPC port still opening."""
        start(self.grpc.serve())
        grpc = asyncio.get_running_loop().time() + GRPC_START_S
        while not self.grpc.listening and asyncio.get_running_loop().time() < grpc:
            await asyncio.sleep(0.01)
        sock = await bind_when_free(self.opts.host, self.opts.http_port, "HTTP", shared=True)
        start(self._serve_rest(sock))
        self._serving = True

    async def _serve_rest(self, sock: Any) -> None:
        config = rest_config(
            RestInfer(self.app, self.data_plane, self.decoder),
            self.opts.limits,
            self.opts.debug,
            self.inflight,
        )
        self._rest = DrainingServer(config)
        config = secure_http(config, self.auth, self.opts.auth)  # infer checked, TLS
        logger.info("HTTP on http://%s:%d", self.opts.host, self.opts.http_port)
        await self._rest.serve(sockets=[sock])

    async def _agree_with_siblings(self) -> None:
        """Wait, bounded, until this process serves the model versions its serving
        siblings serve (none, or the same: a process that starts again beside them)."""
        deadline = time.monotonic() + AGREE_TIMEOUT_S
        while time.monotonic() < deadline:
            await self.repository.follow()
            mine = self.models.versions()
            if all(other == mine for other in self.siblings.others_versions()):
                return
            await asyncio.sleep(FOLLOW_INTERVAL_S)
        logger.warning(
            "serving models %s, which differ from another process's after %.0f s",
            self.models.versions(), AGREE_TIMEOUT_S,
        )  # fmt: skip

    async def _follow_siblings(self) -> None:
        while not self._stop.is_set():
            await self.repository.follow()
            self.siblings.publish(
                self.process_ready(),
                self.models.versions(),
                self.repository.applied,
                self.registry.errors(),
            )
            await asyncio.sleep(FOLLOW_INTERVAL_S)

    async def stop(self) -> None:
        self._stop.set()
        self._serving = False
        if self._rest is not None:  # drains beside gRPC, in the same grace period
            self._rest.should_exit = True
        await self.grpc.stop(self.opts.shutdown_grace_s)
        if self.metrics is not None:
            await self.metrics.stop()
        if self._pool is not None:
            await self._pool.close()
        if self._envs is not None:
            await self._envs.close()
        self.decoder.close()


async def serve(opts: ServeOptions) -> None:
    await Server(opts).run()
