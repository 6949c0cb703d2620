"""The V2 model repository API (index, load, unload) over the registry's folders.

A call taken by one process acts on every process of the server: it is posted to the
log the processes follow (`siblings.py`), and answered once every running process has
applied it. A load that fails anywhere is reported with the folder's error; a model
it was to bring back stays unloaded everywhere.
"""

from __future__ import annotations

import asyncio
import logging

from mlserver.errors import MLServerError
from mlserver.types import (
    RepositoryIndexRequest,
    RepositoryIndexResponse,
    RepositoryIndexResponseItem,
)
from mlserver.types import (
    State as V2State,
)

from modelyard.serving.registry import LoadFailed, Registry, State
from modelyard.serving.rollouts import NoRollout
from modelyard.serving.siblings import ABORT, LOAD, PROMOTE, UNLOAD, Action, Siblings

logger = logging.getLogger(__name__)

# How long a repository call waits for every process to apply it.
APPLY_TIMEOUT_S = 300.0

_V2_STATES = {
    State.LOADING: V2State.LOADING,
    State.READY: V2State.READY,
    State.FAILED: V2State.UNAVAILABLE,
    State.UNLOADED: V2State.UNAVAILABLE,
}


class NotApplied(MLServerError):
    def __init__(self, message: str):
        super().__init__(message, status_code=503)


class Repository:
    """MLServer's repository handlers (`index`, `load`, `unload`) for this server."""

    def __init__(self, registry: Registry, siblings: Siblings):
        self.registry = registry
        self.siblings = siblings
        self.applied = 0  # the last action of the log this process has applied
        self._lock = asyncio.Lock()

    async def index(self, payload: RepositoryIndexRequest) -> RepositoryIndexResponse:
        items = []
        for status in self.registry.statuses():
            if status.name is None:
                continue
            state = _V2_STATES[status.state]
            if payload.ready and state != V2State.READY:
                continue
            items.append(
                RepositoryIndexResponseItem(
                    name=status.name,
                    version=status.serving_version or None,
                    state=state,
                    reason=status.error or "",
                )
            )
        return RepositoryIndexResponse(root=items)

    async def load(self, name: str) -> bool:
        return await self._act(LOAD, name)

    async def unload(self, name: str) -> bool:
        return await self._act(UNLOAD, name)

    async def act(self, verb: str, name: str) -> bool:
        """A rollout's promote or abort, on every process."""
        rollouts = self.registry.rollouts
        if rollouts is None or name not in rollouts.active:
            self.registry.folder_of(name)  # a name no folder serves: 404
            raise NoRollout(name)
        rollouts.refuse(verb, name)
        return await self._act(verb, name)

    async def _act(self, verb: str, name: str) -> bool:
        self.registry.folder_of(name)  # a name no folder serves: 404, and nothing posted
        was_unloaded = name in self.registry.held
        generation = self.siblings.post(verb, name)
        await self.follow()
        if self.siblings.solo:
            errors = [self.registry.errors()]
        else:
            if not await asyncio.to_thread(self.siblings.wait_applied, generation, APPLY_TIMEOUT_S):
                raise NotApplied(
                    f"model '{name}': {verb} was not applied by every server process within "
                    f"{APPLY_TIMEOUT_S:.0f} s; GET /modelyard/status shows each process"
                )
            errors = [p.get("errors", {}) for p in self.siblings.processes() if p is not None]
        failed = [e[name] for e in errors if name in e] if verb == LOAD else []
        if failed:
            if was_unloaded:  # unloaded everywhere again, rather than served by some
                await self._act(UNLOAD, name)
            raise LoadFailed(failed[0])
        return True

    async def follow(self) -> None:
        """Apply the actions of the log this process has not applied yet, in order."""
        async with self._lock:
            for action in self.siblings.actions_after(self.applied):
                await self._apply(action)
                self.applied = action.generation

    def replay(self) -> None:
        """Before this process first loads: the models the log leaves unloaded."""
        for action in self.siblings.actions_after(0):
            if action.verb == UNLOAD:
                self.registry.held.add(action.name)
            elif action.verb == LOAD:
                self.registry.held.discard(action.name)
            self.applied = action.generation

    async def _apply(self, action: Action) -> None:
        try:
            if action.verb == UNLOAD:
                await self.registry.unload(action.name)
            elif action.verb == PROMOTE:
                await self.registry.promote(action.name)
            elif action.verb == ABORT:
                await self.registry.abort(action.name)
            else:
                await self.registry.load(action.name)
        except LoadFailed as e:
            logger.error("model '%s': repository load failed: %s", action.name, e)
        except MLServerError as e:
            logger.error("model '%s': repository %s: %s", action.name, action.verb, e)
