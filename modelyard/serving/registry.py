"""The live registry: keeps the loaded models in step with a directory of model folders.

Each folder is validated, turned into MLServer model settings and swapped in through
`LoadedModels` (loaded next to the serving version, warmed up with the declaration's
example through the same checks as a client's call). A folder that fails leaves the
previous version serving and records the error in its status; one still being
written (a copy, an editor's save) is looked at again once it has settled, not
reported. A model unloaded through the repository API stays unloaded, whatever its
folder does, until it is loaded again through the API.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from mlserver.errors import MLServerError, ModelNotFound
from mlserver.settings import ModelSettings
from mlserver.types import InferenceRequest

from modelyard import environments
from modelyard.declarations.companions import companions
from modelyard.declarations.folders import find_model_folders, is_model_folder, load_model_folder
from modelyard.declarations.load import DECLARATION_FILENAME, example_request
from modelyard.errors import InvalidModelFolder
from modelyard.imports import with_the_turn
from modelyard.serving import metrics, registry_uris
from modelyard.serving.artifacts import UnreadableArtifact
from modelyard.serving.models import LoadedModels, settle_heap
from modelyard.serving.registry_uris import RegistryUriError, Resolved, is_registry_uri
from modelyard.serving.rollouts import Rollouts

logger = logging.getLogger(__name__)

# A folder that fails within this long of its last write is looked at again rather
# than reported: an editor or a copy may still be writing it.
SETTLE_S = 1.0


class State(StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    UNLOADED = "unloaded"  # through the repository API


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
    # Models served next to the folder's own (see modelyard.declarations.companions).
    companions: list[str] = field(default_factory=list)
    # For a model named by a registry URI: what it resolved to (`registry_uris.py`).
    registry: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "folder": self.folder,
            "name": self.name,
            "state": self.state.value,
            "serving_version": self.serving_version,
            "error": self.error,
            "updated_at": self.updated_at,
            "companions": self.companions,
            "registry": self.registry,
        }


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


def newest_mtime(folder: Path) -> float:
    newest = 0.0
    for path in [folder, *folder.rglob("*")]:
        try:
            newest = max(newest, path.stat().st_mtime)
        except FileNotFoundError:
            continue
    return newest


class LoadFailed(MLServerError):
    """A repository load whose folder failed: the folder's error, for the caller."""

    def __init__(self, message: str):
        super().__init__(message, status_code=400)


class Registry:
    """Keeps ``models`` in step with the folders below ``root``.

    Folders are handled independently (a slow load never holds up another folder)
    but each one in order: a change that lands while the folder loads is applied next.
    """

    def __init__(self, root: Path, models: LoadedModels, rollouts: Rollouts | None = None):
        self.root = root
        self.models = models
        # A new version of a folder declaring `rollout` is loaded as a candidate.
        self.rollouts = rollouts
        self.folders: dict[str, FolderStatus] = {}
        self.synced = False
        # Model names unloaded through the repository API.
        self.held: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task] = set()
        # Registry URIs seen to move by `follow_registry`, by folder, for the next load.
        self._moved: dict[str, Resolved] = {}

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

    def errors(self) -> dict[str, str]:
        """The error of each model whose latest version failed, by model name."""
        return {
            s.name: s.error
            for s in self.folders.values()
            if s.state == State.FAILED and s.name and s.error
        }

    # -- changes -------------------------------------------------------------------
    async def sync(self) -> None:
        """Load new and changed folders, unload removed ones; returns when all are done."""
        present = {str(p) for p in find_model_folders(self.root)} if self.root.is_dir() else set()
        await asyncio.gather(
            *[self.sync_folder(Path(k)) for k in sorted(present | set(self.folders))]
        )
        self.synced = True
        settle_heap()

    async def sync_folder(self, folder: Path, force: bool = False) -> None:
        key = str(folder)
        async with self._locks.setdefault(key, asyncio.Lock()):
            if is_model_folder(folder):
                fingerprint = folder_fingerprint(folder)
                status = self.folders.get(key)
                if force or status is None or status.fingerprint != fingerprint:
                    await self._apply(folder, fingerprint)
            elif key in self.folders:
                await self._remove(key)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _apply(self, folder: Path, fingerprint: str) -> None:
        key = str(folder)
        status = self.folders.get(key)
        if status is None:
            status = self.folders[key] = FolderStatus(folder=key)
            # The folder's failure series exists, at 0, before anything can fail.
            metrics.REGISTRY_FAILURES.labels(model=folder.name)
        status.fingerprint = fingerprint
        status.state = State.LOADING
        status.updated_at = time.time()
        try:
            # Reading a declaration imports its code, and the libraries that check it.
            settings = await asyncio.to_thread(with_the_turn, load_model_folder, folder)
            # A folder with requirements: its environment, built beside the serving version.
            await asyncio.to_thread(environments.prepare, folder, settings)
        except InvalidModelFolder as e:
            if self._settling(folder, status):
                return None
            return self._failed(status, folder.name, str(e), invalid=True)
        except Exception as e:
            return self._failed(status, folder.name, f"{folder}: {type(e).__name__}: {e}")

        previous = status.name
        metrics.REGISTRY_FAILURES.labels(model=settings.name)
        clash = next(
            (s for k, s in self.folders.items() if k != key and s.name == settings.name), None
        )
        if clash is not None:
            return self._failed(
                status,
                settings.name,
                f"{folder}: model name '{settings.name}' is already served from "
                f"{clash.folder}; give one of them another name",
                invalid=True,
            )
        if previous and previous != settings.name:
            await self._unserve(status)
        status.name = settings.name
        if settings.name in self.held:
            return self._unloaded(status)
        try:
            resolved = await self._resolve_registry_uri(folder, settings, fingerprint)
        except RegistryUriError as e:
            return self._failed(status, settings.name, f"{folder}: {e}")
        try:
            candidate = None
            if self.rollouts is not None and status.serving_version is not None:
                candidate = await self.rollouts.begin(settings, warmup_request(folder))
            if candidate is None:
                await self.models.swap(settings, warmup_request(folder))
        except Exception as e:
            if self._settling(folder, status):
                return None
            if isinstance(e, UnreadableArtifact):
                message = str(e)
            else:
                message = (
                    f"{folder}: model '{settings.name}' failed to load: {type(e).__name__}: {e}"
                )
            return self._failed(status, settings.name, message)
        metrics.REGISTRY_RELOADS.labels(model=settings.name).inc()
        metrics.REGISTRY_FAILING.labels(model=settings.name).set(0)
        status.state = State.READY
        status.error = None
        self._served_registry_uri(folder, status, resolved, fingerprint)
        if candidate is not None:  # the incumbent serves on beside it
            status.updated_at = time.time()
            return None
        status.serving_version = settings.version or ""
        status.updated_at = time.time()
        logger.info(
            "model '%s' version %s serving from %s", settings.name, settings.version, folder
        )
        await self._apply_companions(status, settings)

    async def _resolve_registry_uri(
        self, folder: Path, settings: ModelSettings, fingerprint: str
    ) -> Resolved | None:
        """For a model named by a registry URI, the version to serve, written into its
        settings: the one `follow_registry` saw it move to, else the one pinned for
        these files, else the one it names now."""
        params = settings.parameters
        uri = params.uri if params is not None else None
        if params is None or uri is None or not is_registry_uri(uri):
            return None
        resolved = self._moved.pop(str(folder), None)
        if resolved is None or resolved.uri != uri:
            resolved = await asyncio.to_thread(registry_uris.pinned, folder, uri, fingerprint)
            how = "pinned"
        else:
            how = "moved"
        if resolved is None:
            resolved = await asyncio.to_thread(registry_uris.resolve, uri)
            how = "resolved"
        logger.info("model '%s': %s is %s (%s)", settings.name, uri, resolved.pinned, how)
        params.uri = resolved.pinned
        return resolved

    def _served_registry_uri(
        self, folder: Path, status: FolderStatus, resolved: Resolved | None, fingerprint: str
    ) -> None:
        status.registry = resolved.as_dict() if resolved is not None else None
        if resolved is None:
            return
        try:
            registry_uris.pin(folder, resolved, fingerprint)
        except OSError as e:  # a read-only home: served, but not pinned across restarts
            logger.warning("model '%s': cannot pin %s: %s", status.name, resolved.pinned, e)

    async def follow_registry(self, stop: asyncio.Event, poll_s: float) -> None:
        """Until ``stop``: every ``poll_s``, resolve each served alias, stage or latest
        afresh; a folder whose URI now names another version is loaded again with it
        (the same swap, or a rollout's candidate, as a new folder version)."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), poll_s)
                return
            except TimeoutError:
                pass
            for key, status in list(self.folders.items()):
                served = status.registry
                if served is None or status.state is State.UNLOADED:
                    continue
                if not registry_uris.moves(served["uri"]):
                    continue
                try:
                    now = await asyncio.to_thread(registry_uris.resolve, served["uri"])
                except Exception as e:  # the tracking server down: try again next poll
                    logger.warning("model '%s': %s not resolved: %s", status.name,
                                   served["uri"], e)  # fmt: skip
                    continue
                if now.pinned != served["pinned"]:
                    logger.info("model '%s': %s moved from %s to %s", status.name,
                                served["uri"], served["pinned"], now.pinned)  # fmt: skip
                    self._moved[key] = now
                    self._spawn(self.sync_folder(Path(key), force=True))

    def _settling(self, folder: Path, status: FolderStatus) -> bool:
        """Whether a folder that just failed was written to moments ago (a copy or a
        save still in progress): then it is looked at again once quiet, not reported."""
        age = time.time() - newest_mtime(folder)
        if age >= SETTLE_S and folder_fingerprint(folder) == status.fingerprint:
            return False
        logger.info("%s is still being written; looking at it again once it settles", folder)
        status.fingerprint = ""
        self._spawn(self._retry(folder, max(SETTLE_S - age, 0.0)))
        return True

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

    def _failed(
        self, status: FolderStatus, label: str, message: str, invalid: bool = False
    ) -> None:
        metrics.REGISTRY_FAILURES.labels(model=label).inc()
        metrics.REGISTRY_FAILING.labels(model=label).set(1)
        status.state = State.FAILED
        status.error = message
        status.updated_at = time.time()
        if status.serving_version is not None:
            message += f"\n(version {status.serving_version or '-'} keeps serving)"
        logger.error("%s%s", "invalid model folder:\n" if invalid else "", message)

    def _unloaded(self, status: FolderStatus) -> None:
        status.state = State.UNLOADED
        status.error = (
            f"unloaded through the repository API; POST /v2/repository/models/{status.name}"
            "/load (with the admin token) serves it again"
        )
        status.updated_at = time.time()

    async def _unserve(self, status: FolderStatus) -> None:
        if self.rollouts is not None and status.name:
            await self.rollouts.end(status.name)
        for name in status.companions:
            await self.models.remove(name)
        status.companions = []
        if status.name:
            await self.models.remove(status.name)
        status.serving_version = None

    async def _remove(self, key: str) -> None:
        status = self.folders.pop(key)
        await self._unserve(status)
        if status.name:
            logger.info("model '%s' unloaded: %s was removed", status.name, key)

    # -- the repository API --------------------------------------------------------
    def folder_of(self, name: str) -> Path:
        for status in self.folders.values():
            if status.name == name:
                return Path(status.folder)
        raise ModelNotFound(name)

    async def unload(self, name: str) -> None:
        """Stop serving ``name`` until `load` is asked for it."""
        folder = self.folder_of(name)
        self.held.add(name)
        async with self._locks.setdefault(str(folder), asyncio.Lock()):
            status = self.folders[str(folder)]
            await self._unserve(status)
            self._unloaded(status)
        logger.info("model '%s' unloaded through the repository API", name)

    async def load(self, name: str) -> None:
        """Load ``name``'s folder again (and serve it, if it was unloaded)."""
        folder = self.folder_of(name)
        self.held.discard(name)
        await self.sync_folder(folder, force=True)
        status = self.folders.get(str(folder))
        if status is not None and status.state == State.FAILED:
            raise LoadFailed(status.error or f"model '{name}' failed to load")

    async def promote(self, name: str) -> None:
        """Serve ``name``'s candidate (`rollouts.py`) instead of its incumbent."""
        folder = self.folder_of(name)
        async with self._locks.setdefault(str(folder), asyncio.Lock()):
            if self.rollouts is None:
                return
            model = await self.rollouts.promote(name)
            self.folders[str(folder)].serving_version = model.version or ""

    async def abort(self, name: str) -> None:
        """Unload ``name``'s candidate; the incumbent serves on."""
        folder = self.folder_of(name)
        async with self._locks.setdefault(str(folder), asyncio.Lock()):
            if self.rollouts is not None:
                await self.rollouts.end(name)

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


def warmup_request(folder: Path) -> InferenceRequest | None:
    """The declaration's example request, if it gives one."""
    if not (folder / DECLARATION_FILENAME).is_file():
        return None
    return example_request(folder)
