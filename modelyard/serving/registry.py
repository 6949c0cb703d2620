"""The live registry: keeps MLServer's loaded models in step with a directory of model folders.

Each folder is validated, turned into MLServer model settings and loaded through
MLServer's own model registry. A changed folder is loaded next to the serving
one and swapped in only once it has loaded (and answered a warm-up request, when
its declaration gives an example); a folder that fails leaves the previous
version serving and records the error in its status.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from mlserver.context import model_context
from mlserver.errors import ModelNotFound
from mlserver.model import MLModel
from mlserver.registry import MultiModelRegistry, SingleModelRegistry
from mlserver.repository import ModelRepository
from mlserver.settings import ModelSettings
from mlserver.types import InferenceRequest

from modelyard.serving import metrics
from modelyard.declarations.companions import companions
from modelyard.serving.direct import predict_directly
from modelyard.errors import InvalidModelFolder
from modelyard.declarations.folders import find_model_folders, is_model_folder, load_model_folder
from modelyard.declarations.integrity import verify_settings
from modelyard.serving.lanes import give_lane
from modelyard.serving.signature import SIGNATURE_ATTR

logger = logging.getLogger("modelyard.serving.registry")

# A model still answering requests is unloaded once they finish, or after this.
DRAIN_TIMEOUT_S = 30.0
INFLIGHT_ATTR = "_modelyard_inflight"
# A folder that fails validation within this long of its last write is looked at
# again rather than reported: an editor or a copy may still be writing it.
SETTLE_S = 1.0


class State(StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass
class FolderStatus:
    """What the registry knows of one model folder."""

    folder: str
    name: str | None = None
    state: State = State.LOADING
    # The version answering requests, which is the previous one while a newer
    # folder fails to load.
    serving_version: str | None = None
    error: str | None = None
    updated_at: float = field(default_factory=time.time)
    fingerprint: str = ""
    # Models served next to the folder's own (see modelyard.companions).
    companions: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "folder": self.folder,
            "name": self.name,
            "state": self.state.value,
            "serving_version": self.serving_version,
            "error": self.error,
            "updated_at": self.updated_at,
            "companions": self.companions,
        }


def inflight(model: MLModel) -> int:
    return int(getattr(model, INFLIGHT_ATTR, 0))


# Databases kept in a model folder (features.db, predictions.db with its payload log,
# and their journals) are data the model reads and writes while it serves: a write
# there is not a new version of the model.
DATA_SUFFIXES = (".db", ".db-wal", ".db-shm", ".db-journal", ".sqlite", ".duckdb", ".wal")


def folder_fingerprint(folder: Path) -> str:
    """Changes whenever any file in the folder changes (size, mtime or name), its
    databases aside."""
    digest = hashlib.sha1()
    for path in sorted(folder.rglob("*")):
        if "__pycache__" in path.parts or path.name.endswith(DATA_SUFFIXES):
            continue
        try:
            st = path.stat()
        except FileNotFoundError:  # removed while we walk: the next event sees it
            continue
        digest.update(f"{path.relative_to(folder)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


class SwappingModelRegistry(MultiModelRegistry):
    """MLServer's registry with an atomic swap: the new model is loaded off to the
    side and replaces the serving one in a single step, so no request ever finds
    the model missing or not ready."""

    async def swap(self, new_settings: ModelSettings, warmup: InferenceRequest | None) -> MLModel:
        name = new_settings.name
        single = self._models.get(name)
        if single is None:
            single = self._models[name] = SingleModelRegistry(
                new_settings,
                on_model_load=self._on_model_load,
                on_model_reload=self._on_model_reload,
                on_model_unload=self._on_model_unload,
                model_initialiser=self._model_initialiser,
            )
        old_models = await single.get_models()
        new_model = self._model_initialiser(new_settings)
        setattr(new_model, SIGNATURE_ATTR, (list(new_settings.inputs), list(new_settings.outputs)))
        with model_context(new_settings):
            try:
                for callback in self._on_model_load:
                    new_model = await callback(new_model)
                await asyncio.to_thread(verify_settings, new_settings)
                new_model.ready = await new_model.load()
                if new_model.ready and predict_directly(new_model):
                    give_lane(new_model)
                if warmup is not None:
                    await new_model.predict(warmup)
            except BaseException:
                await _unload_quietly(single, new_model)
                if single.empty():
                    del self._models[name]
                raise
        if not new_model.ready:
            await _unload_quietly(single, new_model)
            raise RuntimeError(f"model '{name}': load() returned False")

        # The switch: no await between dropping the old and adding the new.
        single._versions = {}
        single._default = None
        single._register(new_model)
        for old in old_models:
            if old is not new_model:
                asyncio.get_running_loop().create_task(_drain_and_unload(single, old))
        return new_model

    async def load(self, model_settings: ModelSettings) -> MLModel:
        # MLServer's repository API (POST /v2/repository/models/{name}/load) comes
        # through here: give it the same safe swap as the watcher.
        return await self.swap(model_settings, None)

    async def remove(self, name: str) -> None:
        single = self._models.pop(name, None)
        if single is None:
            return
        for model in await single.get_models():
            await _drain_and_unload(single, model)


async def _drain_and_unload(single: SingleModelRegistry, model: MLModel) -> None:
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while inflight(model) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await _unload_quietly(single, model)
    settle_heap()


def settle_heap() -> None:
    """Collect what loading or unloading models left behind, then keep what remains
    (libraries and models: long-lived) out of Python's full garbage collections.

    Scanned, those objects made each full collection pause requests for tens of
    milliseconds: customer-profile's p99 at one caller was 5-54 ms over six runs, and
    5-7 ms over twelve frozen. Unfreezing first lets the next collection free an unloaded model.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


async def _unload_quietly(single: SingleModelRegistry, model: MLModel) -> None:
    with model_context(model.settings):
        await asyncio.gather(
            *[callback(model) for callback in single._on_model_unload], return_exceptions=True
        )
        try:
            model.ready = not await model.unload()
        except Exception:
            logger.exception("model '%s': unload failed", model.name)


class Registry:
    """Keeps a ``SwappingModelRegistry`` in step with the folders below ``root``.

    Folders are handled independently (a slow load never holds up another folder)
    but each one in order: a change that lands while the folder loads is applied next.
    """

    def __init__(self, root: Path, models: SwappingModelRegistry):
        self.root = root
        self.models = models
        self.folders: dict[str, FolderStatus] = {}
        self.synced = False
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task] = set()

    # -- views ---------------------------------------------------------------------
    def statuses(self) -> list[FolderStatus]:
        return [self.folders[k] for k in sorted(self.folders)]

    def ready(self) -> bool:
        """True once every folder has been tried and none is still loading its first version.

        A folder that failed does not hold readiness back: on Kubernetes that would
        take the models that do serve out of the Service; its status shows the error.
        """
        return self.synced and not any(
            s.state == State.LOADING and s.serving_version is None for s in self.folders.values()
        )

    # -- changes -------------------------------------------------------------------
    async def sync(self) -> None:
        """Load new and changed folders, unload removed ones; returns when all are done."""
        present = {str(p) for p in find_model_folders(self.root)} if self.root.is_dir() else set()
        await asyncio.gather(
            *[self.sync_folder(Path(k)) for k in sorted(present | set(self.folders))]
        )
        self.synced = True
        settle_heap()

    async def sync_folder(self, folder: Path) -> None:
        key = str(folder)
        async with self._locks.setdefault(key, asyncio.Lock()):
            if is_model_folder(folder):
                fingerprint = folder_fingerprint(folder)
                status = self.folders.get(key)
                if status is None or status.fingerprint != fingerprint:
                    await self._apply(folder, fingerprint)
            elif key in self.folders:
                await self._remove(key)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _apply(self, folder: Path, fingerprint: str) -> None:
        key = str(folder)
        status = self.folders.setdefault(key, FolderStatus(folder=key))
        status.fingerprint = fingerprint
        status.state = State.LOADING
        status.updated_at = time.time()
        try:
            settings = await asyncio.to_thread(load_model_folder, folder)
        except InvalidModelFolder as e:
            age = time.time() - newest_mtime(folder)
            if age < SETTLE_S:
                # Probably a copy or a save still in progress: look again once the
                # folder has been quiet for a moment instead of reporting it broken.
                status.fingerprint = ""
                self._spawn(self._retry(folder, SETTLE_S - age))
                return None
            return self._failed(status, str(e), invalid=True)
        except Exception as e:
            return self._failed(status, f"{folder}: {type(e).__name__}: {e}")

        previous = status.name
        clash = next(
            (s for k, s in self.folders.items() if k != key and s.name == settings.name), None
        )
        if clash is not None:
            return self._failed(
                status,
                f"{folder}: model name '{settings.name}' is already served from "
                f"{clash.folder}; give one of them another name",
                invalid=True,
            )
        if previous and previous != settings.name:
            await self.models.remove(previous)
            status.serving_version = None
        status.name = settings.name
        try:
            await self.models.swap(settings, warmup_request(folder))
        except Exception as e:
            metrics.REGISTRY_FAILURES.labels(model=settings.name).inc()
            return self._failed(
                status, f"{folder}: model '{settings.name}' failed to load: {type(e).__name__}: {e}"
            )
        metrics.REGISTRY_RELOADS.labels(model=settings.name).inc()
        status.state = State.READY
        status.error = None
        status.serving_version = settings.version or ""
        status.updated_at = time.time()
        logger.info(
            "model '%s' version %s serving from %s", settings.name, settings.version, folder
        )
        await self._apply_companions(status, settings)

    async def _apply_companions(self, status: FolderStatus, settings: ModelSettings) -> None:
        """Serve the models generated from ``settings`` next to it; one that fails is
        logged and never takes the folder's own model down."""
        wanted = companions(settings)
        for name in set(status.companions) - {c.name for c in wanted}:
            await self.models.remove(name)
        status.companions = []
        for companion in wanted:
            if any(s.name == companion.name for s in self.folders.values()):
                logger.error(
                    "model '%s' is not generated for %s: a folder serves that name",
                    companion.name, status.folder,
                )  # fmt: skip
                continue
            try:
                await self.models.swap(companion, None)
            except Exception as e:
                logger.error(
                    "model '%s' (generated for %s) failed to load: %s: %s",
                    companion.name, status.folder, type(e).__name__, e,
                )  # fmt: skip
                continue
            status.companions.append(companion.name)

    async def _retry(self, folder: Path, delay: float) -> None:
        await asyncio.sleep(delay + 0.05)
        await self.sync_folder(folder)

    def _failed(self, status: FolderStatus, message: str, invalid: bool = False) -> None:
        status.state = State.FAILED
        status.error = message
        status.updated_at = time.time()
        if status.serving_version is not None:
            message += f"\n(version {status.serving_version or '-'} keeps serving)"
        logger.error("%s%s", "invalid model folder:\n" if invalid else "", message)

    async def _remove(self, key: str) -> None:
        status = self.folders.pop(key)
        for name in status.companions:
            await self.models.remove(name)
        if status.name and status.serving_version is not None:
            await self.models.remove(status.name)
            logger.info("model '%s' unloaded: %s was removed", status.name, key)

    async def watch(self, stop: asyncio.Event) -> None:
        """Follow the directory until ``stop`` is set."""
        from watchfiles import awatch

        # watchfiles' debounce groups the events of one copy or save; a file still
        # half-written fails validation and is looked at again once it settles.
        async for changes in awatch(self.root, stop_event=stop, debounce=200, step=50):
            for folder in sorted({f for _, p in changes if (f := self._folder_of(Path(p)))}):
                self._spawn(self._sync_and_settle(folder))

    async def _sync_and_settle(self, folder: Path) -> None:
        await self.sync_folder(folder)
        settle_heap()

    def _folder_of(self, path: Path) -> Path | None:
        """The top-level folder of ``root`` that ``path`` is in (hidden ones ignored)."""
        try:
            rel = path.relative_to(self.root)
        except ValueError:
            return None
        if not rel.parts or rel.parts[0].startswith((".", "_")):
            return None
        return self.root / rel.parts[0]


def newest_mtime(folder: Path) -> float:
    newest = 0.0
    for path in [folder, *folder.rglob("*")]:
        try:
            newest = max(newest, path.stat().st_mtime)
        except FileNotFoundError:
            continue
    return newest


class FolderRepository(ModelRepository):
    """MLServer's model repository over the same folders the registry watches, so
    `/v2/repository/index` and `.../load` see declarations as well as plain settings."""

    def __init__(self, root: str):
        self._root = Path(root)

    async def list(self) -> list[ModelSettings]:
        return await asyncio.to_thread(self._valid_settings)

    async def find(self, name: str) -> list[ModelSettings]:
        found = [s for s in await self.list() if s.name == name]
        if not found:
            raise ModelNotFound(name)
        return found

    def _valid_settings(self) -> list[ModelSettings]:
        settings = []
        for folder in find_model_folders(self._root) if self._root.is_dir() else []:
            try:
                settings.append(load_model_folder(folder))
            except InvalidModelFolder:
                continue  # reported by the registry, with every problem
        return settings


def warmup_request(folder: Path) -> InferenceRequest | None:
    """The declaration's example request, if it gives one."""
    from modelyard.declarations.load import DECLARATION_FILENAME

    if not (folder / DECLARATION_FILENAME).is_file():
        return None
    try:
        from modelyard.declarations.load import example_request
    except ImportError:
        return None
    return example_request(folder)
