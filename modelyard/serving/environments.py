"""Models on Python packages of their own (`modelyard.environments`), each served by
a worker process running on its environment, through MLServer's inference pools.

A model whose settings name an ``environment_path`` is loaded in a pool of workers
for that environment (one pool per environment, shared by its models) and answered
through the pool's proxy, behind the same data plane as every model; a model without
one is left as it is, on the in-process path. A worker that dies is restarted by its
pool, which loads its models again; meanwhile its models answer with an error and the
process's status names them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from typing import Any

from mlserver.env import Environment
from mlserver.model import MLModel
from mlserver.settings import ModelSettings, Settings

from modelyard.mlserver_internals import inference_pool, pool_workers

logger = logging.getLogger(__name__)


def environment_of(settings: ModelSettings) -> str | None:
    return settings.parameters.environment_path if settings.parameters else None


def initialiser(
    fallback: Callable[[ModelSettings], MLModel],
) -> Callable[[ModelSettings], MLModel]:
    """``fallback`` for in-process models; a placeholder for a model on an environment
    of its own, whose class is imported in its worker alone (it may not import here)."""

    def initialise(settings: ModelSettings) -> MLModel:
        if environment_of(settings):
            return MLModel(settings)
        return fallback(settings)

    return initialise


class WorkerRestarts:
    """Restarts the dead workers of MLServer inference pools (``pools()``: by a key).

    MLServer's own restart (its pool registry's SIGCHLD handler, reaping with
    ``waitpid(-1)``) never runs here: the event loop's child-process watcher (libuv's,
    for the gRPC front) replaces the process's SIGCHLD action, and a dead worker stays a
    zombie that the dispatcher keeps sending requests to. This handler is installed at
    the first model's load, after the front started, and waits for each pool worker's
    own pid only, never another child's."""

    def __init__(self, pools: Callable[[], dict[str, Any]], chain: bool = True):
        self._pools = pools
        # Also call the handler found installed (not when it is MLServer's registry's,
        # which would reap and restart the same worker again).
        self._chain = chain
        self._down: dict[str, set[int]] = {}
        self._watching = False

    def watch(self) -> None:
        if self._watching:
            return
        self._watching = True
        loop = asyncio.get_running_loop()
        previous = signal.getsignal(signal.SIGCHLD) if self._chain else None

        def on_sigchld(signum: int, frame: Any) -> None:
            loop.call_soon_threadsafe(lambda: loop.create_task(self._reap()))
            if callable(previous):
                previous(signum, frame)

        signal.signal(signal.SIGCHLD, on_sigchld)

    def down(self) -> dict[str, list[int]]:
        """The pools with a worker restarting, and the pids that died."""
        return {key: sorted(pids) for key, pids in self._down.items() if pids}

    def is_down(self, key: str) -> bool:
        return bool(self._down.get(key))

    async def _reap(self) -> None:
        """Restart each pool worker that has exited (only those are waited for)."""
        for key, pool in list(self._pools().items()):
            for pid, worker in list(pool_workers(pool).items()):
                code = worker.exitcode  # waits for this pid alone, without blocking
                if code is None:
                    continue
                logger.error("worker %s of %s exited with %s; restarting it", pid, key, code)
                self._down.setdefault(key, set()).add(pid)
                try:
                    await pool.on_worker_stop(pid, code)
                finally:
                    self._down[key].discard(pid)

    async def load_model(self, model: MLModel) -> MLModel:
        """An on_load hook: watching starts with the first model (its workers exist)."""
        self.watch()
        return model


class EnvironmentPools:
    """One MLServer `InferencePool` per environment, of ``workers`` processes each."""

    def __init__(self, settings: Settings, workers: int = 1):
        self._settings = settings.model_copy(update={"parallel_workers": max(1, workers)})
        self._pools: dict[str, Any] = {}  # MLServer's InferencePool, by environment
        self._models: dict[int, str] = {}  # id(proxy) -> environment
        self._restarts = WorkerRestarts(lambda: self._pools)

    # -- the on_load / on_unload hooks of LoadedModels ------------------------------
    async def load_model(self, model: MLModel) -> MLModel:
        path = environment_of(model.settings)
        if not path:
            return model
        pool = self._pools.get(path)
        if pool is None:
            self._restarts.watch()
            env = Environment(path, env_hash=os.path.basename(path), delete_env=False)
            pool = self._pools[path] = inference_pool(self._settings, env)
            logger.info("worker pool started for environment %s", path)
        loaded = await pool.load_model(model)
        self._models[id(loaded)] = path
        return loaded

    async def unload_model(self, model: MLModel) -> MLModel:
        path = self._models.pop(id(model), None)
        pool = self._pools.get(path) if path else None
        if pool is None:
            return model
        with contextlib.suppress(Exception):
            await pool.unload_model(model)
        if pool.empty() and path not in self._models.values():
            del self._pools[path]  # type: ignore[arg-type]
            await pool.close()
            logger.info("worker pool of environment %s closed: no model uses it", path)
        return model

    # -- status --------------------------------------------------------------------
    def down(self) -> dict[str, list[int]]:
        """Environments with a worker restarting, and the pids that died."""
        return self._restarts.down()

    def models_down(self, models: list[MLModel]) -> list[str]:
        """The names of ``models`` whose environment has a worker restarting."""
        return sorted(m.name for m in models if self._restarts.is_down(self._models.get(id(m), "")))

    async def close(self) -> None:
        for pool in list(self._pools.values()):
            with contextlib.suppress(Exception):
                await pool.close()
        self._pools.clear()
