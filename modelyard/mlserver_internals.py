"""Every use of MLServer's private names, in one place.

MLServer (1.7.1) is no longer maintained upstream. modelyard keeps its model API
(`MLModel`, codecs, types, settings, the runtimes) and its V2 protocol, and reaches
into what it does not publish only here, so a fork or a replacement of MLServer
touches this file alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
from mlserver.grpc.interceptors import PromServerInterceptor
from mlserver.model import MLModel
from mlserver.settings import ModelSettings


def runtime_model(model: MLModel) -> Any:
    """The library object MLServer's scikit-learn, XGBoost and LightGBM runtimes predict with."""
    return getattr(model, "_model", None)


# The key of a settings dictionary that names the file it was read from, as MLServer's
# own loader sets it (a private attribute of `ModelSettings`).
SOURCE_KEY = "_source"


def settings_source(settings: ModelSettings) -> str | None:
    """The settings file a model's relative paths are resolved against, if any."""
    return settings._source


def settings_folder(settings: ModelSettings) -> Path | None:
    """The folder of the settings file (the model folder), if the settings came from one."""
    source = settings_source(settings)
    return Path(source).resolve().parent if source else None


def set_settings_source(settings: ModelSettings, source: str | None) -> None:
    settings._source = source


class GRPCInferMetrics:
    """The Prometheus interceptor's own metrics for unary ModelInfer calls, for calls
    answered without the interceptor (their series and labels stay the interceptor's)."""

    SERVICE = "inference.GRPCInferenceService"

    def __init__(self, prom: PromServerInterceptor):
        interceptor = prom._interceptor
        labels = {"grpc_type": "UNARY", "grpc_service": self.SERVICE, "grpc_method": "ModelInfer"}
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


def inference_pool(settings: Any, env: Any) -> Any:
    """An MLServer `InferencePool` (not exported by `mlserver.parallel`) on ``env``."""
    from mlserver.parallel.pool import InferencePool

    return InferencePool(settings, env=env)


def registry_pools(registry: Any) -> dict[str, Any]:
    """The inference pools of an MLServer `InferencePoolRegistry`: its default pool
    (models on the server's packages) and one per environment, by its hash."""
    pools: dict[str, Any] = {"default": registry._default_pool, **registry._pools}
    return pools


def pool_workers(pool: Any) -> dict[int, Any]:
    """The worker processes of an MLServer `InferencePool`, by pid."""
    workers: dict[int, Any] = pool._workers
    return workers
