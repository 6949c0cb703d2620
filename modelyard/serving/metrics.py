"""The serving core's Prometheus metrics, and the metrics port that serves every metric.

The request metrics keep MLServer's names and labels (`model_infer_request_*`), so
dashboards and alerts written for MLServer read them unchanged. A model name or
version a client made up is counted under one label value, `_unknown`: a label per
name would let any client grow the scrape without bound.
"""

from __future__ import annotations

import asyncio
import glob
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import uvicorn
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Metric,
    Summary,
    generate_latest,
    multiprocess,
)

from modelyard.serving.auth import Auth, AuthOptions, secure_http
from modelyard.serving.listeners import HTTPServer, bind_when_free
from modelyard.serving.siblings import PROMETHEUS_DIR_ENV

logger = logging.getLogger(__name__)

METRICS_PATH = "/metrics"
# The label value of every model name or version no model of this server has.
UNKNOWN = "_unknown"

INFER_SUCCESS = Counter(
    "model_infer_request_success", "Model infer request success count", ["model", "version"]
)
INFER_FAILURE = Counter(
    "model_infer_request_failure", "Model infer request failure count", ["model", "version"]
)
INFER_DURATION = Summary(
    "model_infer_request_duration", "Model infer request duration", ["model", "version"]
)

REGISTRY_RELOADS = Counter(
    "modelyard_registry_loads", "Model versions loaded or swapped in by the registry", ["model"]
)
# Every folder's series exists from the moment the folder is seen, at 0, so that the
# first failure is an increase an alert can see; a folder whose declaration names no
# model is counted under its folder's name.
REGISTRY_FAILURES = Counter(
    "modelyard_registry_failures", "Model folders that failed to load", ["model"]
)
REGISTRY_FAILING = Gauge(
    "modelyard_registry_failing",
    "1 while a model folder's latest version failed to load (the previous one, if any, serves)",
    ["model"],
    multiprocess_mode="max",
)

REST_REQUESTS = Counter(
    "modelyard_rest_infer_requests", "V2 REST inference requests", ["model", "code"]
)
REST_DURATION = Histogram(
    "modelyard_rest_infer_seconds",
    "V2 REST inference latency, from the request's arrival to its answer",
    ["model"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

# Rollouts (modelyard.serving.rollouts): the calls each side answered, the shadow calls
# dropped for a full queue, and the agreement of the merged comparison (set by the
# first process alone).
ROLLOUT_REQUESTS = Counter(
    "modelyard_rollout_requests",
    "Calls answered by a rollout's incumbent and candidate (shadow calls included)",
    ["model", "incumbent", "candidate", "side"],
)
ROLLOUT_DROPPED = Counter(
    "modelyard_rollout_shadow_dropped",
    "Shadow calls not sent to the candidate because its queue was full",
    ["model", "incumbent", "candidate"],
)
ROLLOUT_AGREEMENT = Gauge(
    "modelyard_rollout_agreement",
    "Share of compared calls on which a rollout's candidate agreed with its incumbent",
    ["model", "incumbent", "candidate"],
    multiprocess_mode="max",
)

# What a HorizontalPodAutoscaler scales on for models whose cost is not CPU; summed
# over the live processes of a multi-process server.
IN_FLIGHT = Gauge(
    "modelyard_requests_in_flight",
    "V2 inference requests being answered, REST and gRPC",
    ["model"],
    multiprocess_mode="livesum",
)


class ProcessFilesCollector:
    """The metrics every process of a multi-process server wrote to its files in
    `directory`, merged. A process creates its file empty and sizes it a moment later:
    a file still empty holds no metric yet and is passed over, where Prometheus'
    own collector fails the whole scrape on it."""

    def __init__(self, directory: str):
        self.directory = directory

    def collect(self) -> Iterable[Metric]:
        files = [path for path in glob.glob(os.path.join(self.directory, "*.db")) if _sized(path)]
        return multiprocess.MultiProcessCollector.merge(files, accumulate=True)


def _sized(path: str) -> bool:
    try:
        return os.path.getsize(path) >= _FILE_HEADER_BYTES
    except FileNotFoundError:  # a stopped process's file, removed since the listing
        return False


# A metrics file starts with how many of its bytes are used, in 8 bytes it has from
# the moment its process sizes it.
_FILE_HEADER_BYTES = 8


def scrape() -> bytes:
    """Every metric of this server: of all its processes when it has several."""
    directory = os.environ.get(PROMETHEUS_DIR_ENV)
    if directory:
        registry = CollectorRegistry()
        registry.register(ProcessFilesCollector(directory))
        return generate_latest(registry)
    return generate_latest(REGISTRY)


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


async def metrics_app(
    scope: Scope,
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    if scope["path"] == METRICS_PATH:
        status, body = 200, await asyncio.to_thread(scrape)
        headers = [(b"content-type", CONTENT_TYPE_LATEST.encode())]
    else:
        status, body = 404, b"metrics are served on " + METRICS_PATH.encode() + b"\n"
        headers = [(b"content-type", b"text/plain")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class MetricsServer:
    """The metrics port. A port that another program holds for a moment is waited for,
    never a reason for the process to exit."""

    def __init__(
        self, host: str, port: int, auth: Auth | None = None, tls: AuthOptions | None = None
    ):
        self.host = host
        self.port = port
        self.auth = auth
        self.tls = tls
        self._server: HTTPServer | None = None

    async def serve(self) -> None:
        sock = await bind_when_free(self.host, self.port, "metrics", shared=False)
        config = uvicorn.Config(metrics_app, access_log=False, log_config=None, lifespan="off")
        if self.auth is not None and self.tls is not None:  # inference's tokens and TLS
            config = secure_http(config, self.auth, self.tls)
        self._server = HTTPServer(config)
        logger.info("metrics on http://%s:%d%s", self.host, self.port, METRICS_PATH)
        await self._server.serve(sockets=[sock])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
