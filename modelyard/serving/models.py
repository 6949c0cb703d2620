"""The models one server process serves: one version per name, swapped in one step.

A new version is made, loaded, checked and warmed up off to the side; only then does
it replace the serving one, with no await in between, so no request ever finds the
model missing or not ready. The replaced version is unloaded once the requests it
already took have been answered.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from mlserver.context import model_context
from mlserver.errors import ModelNotFound
from mlserver.model import MLModel
from mlserver.settings import ModelSettings
from mlserver.types import InferenceRequest

from modelyard.declarations.integrity import verify_settings
from modelyard.declarations.signature import (
    OutputSignatureError,
    check_request,
    check_response,
    declared,
    declared_signature,
    keep_signature,
)
from modelyard.imports import in_turns
from modelyard.serving.artifacts import unreadable
from modelyard.serving.direct import predict_directly
from modelyard.serving.lanes import give_lane

logger = logging.getLogger(__name__)

# A model still answering requests is unloaded once they finish, or after this.
DRAIN_TIMEOUT_S = 30.0
INFLIGHT_ATTR = "_modelyard_inflight"

ModelHook = Callable[[MLModel], Awaitable[MLModel]]


def inflight(model: MLModel) -> int:
    return int(getattr(model, INFLIGHT_ATTR, 0))


class InFlight:
    """Counts a request in flight on its model object, so that a swapped-out version is
    unloaded only once the requests it took have been answered."""

    __slots__ = ("model",)

    def __init__(self, model: MLModel):
        self.model = model

    def __enter__(self) -> None:
        setattr(self.model, INFLIGHT_ATTR, inflight(self.model) + 1)

    def __exit__(self, *exc: object) -> None:
        setattr(self.model, INFLIGHT_ATTR, inflight(self.model) - 1)


class WarmUpError(Exception):
    """The declaration's example was not answered as a client's call must be."""


def _initialise(settings: ModelSettings) -> MLModel:
    return settings.implementation(settings)


class LoadedModels:
    """This process's models by name. ``on_load`` hooks run on a new model before it
    loads (custom REST handlers, adaptive batching), ``on_unload`` ones after it is
    dropped."""

    def __init__(
        self,
        on_load: Sequence[ModelHook] = (),
        on_unload: Sequence[ModelHook] = (),
        initialise: Callable[[ModelSettings], MLModel] = _initialise,
    ):
        self._models: dict[str, MLModel] = {}
        self._candidates: dict[str, MLModel] = {}
        self._on_load = list(on_load)
        self._on_unload = list(on_unload)
        self._initialise = initialise

    # -- lookups -----------------------------------------------------------------------
    def find(self, name: str, version: str | None = None) -> MLModel | None:
        """The model serving ``name`` (at ``version``, when one is asked for), else None."""
        model = self._models.get(name)
        if model is None or (version and model.version != version):
            return None
        return model

    async def get_model(self, name: str, version: str | None = None) -> MLModel:
        model = self.find(name, version)
        if model is None:
            raise ModelNotFound(name, version or None)
        return model

    async def get_models(self, name: str | None = None) -> list[MLModel]:
        if name is not None:
            model = self._models.get(name)
            return [model] if model is not None else []
        return list(self._models.values())

    def versions(self) -> dict[str, str]:
        """Each model's name and the version serving it."""
        return {name: model.version or "" for name, model in sorted(self._models.items())}

    # -- changes -----------------------------------------------------------------------
    async def swap(self, settings: ModelSettings, warmup: InferenceRequest | None) -> MLModel:
        """Load ``settings`` beside the serving version, warm it up with ``warmup``
        through the same checks as a client's call, then serve it instead."""
        model = await self.load(settings, warmup)
        self._serve(settings.name, model)
        return model

    async def load(self, settings: ModelSettings, warmup: InferenceRequest | None) -> MLModel:
        """``settings`` loaded, checked and warmed up, served by nothing yet.

        Each step of the load holds the turn to import (`modelyard.imports.in_turns`):
        the model's code never imports beside another thread's imports, and a load that
        waits holds up no other."""
        return await in_turns(self._load(settings, warmup))

    async def _load(self, settings: ModelSettings, warmup: InferenceRequest | None) -> MLModel:
        name = settings.name
        model = self._initialise(settings)
        signature = declared_signature(settings)  # before load: a runtime may add to it
        with model_context(settings):
            try:
                for hook in self._on_load:
                    model = await hook(model)  # a hook may wrap it (a worker pool's proxy)
                keep_signature(model, signature)
                await asyncio.to_thread(verify_settings, settings)
                try:
                    model.ready = await model.load()
                except Exception as e:
                    raise (unreadable(settings, e) or e) from None
                if not model.ready:
                    raise RuntimeError(f"model '{name}': load() returned False")
                if predict_directly(model):
                    give_lane(model)
                if warmup is not None:
                    await _warm_up(model, warmup)
            except BaseException:
                await self._unload(model)
                raise
        return model

    def _serve(self, name: str, model: MLModel) -> None:
        # The switch: no await between dropping the old version and adding the new.
        old = self._models.get(name)
        self._models[name] = model
        if old is not None and old is not model:
            asyncio.get_running_loop().create_task(self._drain_and_unload(old))

    # -- candidates (modelyard.serving.rollouts) ----------------------------------------
    def candidate(self, name: str) -> MLModel | None:
        """The version loaded beside ``name``'s serving one, to be compared with it."""
        return self._candidates.get(name)

    async def add_candidate(
        self, settings: ModelSettings, warmup: InferenceRequest | None
    ) -> MLModel:
        """Load ``settings`` as ``name``'s candidate, with the steps of `swap`; the
        serving version is untouched, whether it loads or not."""
        model = await self.load(settings, warmup)
        old = self._candidates.get(settings.name)
        self._candidates[settings.name] = model
        if old is not None:
            asyncio.get_running_loop().create_task(self._drain_and_unload(old))
        return model

    def promote(self, name: str) -> MLModel | None:
        """Serve ``name``'s candidate instead of its serving version, in one step."""
        model = self._candidates.pop(name, None)
        if model is not None:
            self._serve(name, model)
        return model

    async def drop_candidate(self, name: str) -> bool:
        """Unload ``name``'s candidate once the requests it took are answered."""
        model = self._candidates.pop(name, None)
        if model is None:
            return False
        await self._drain_and_unload(model)
        return True

    async def remove(self, name: str) -> bool:
        """Stop serving ``name`` (and its candidate); True if it was served."""
        await self.drop_candidate(name)
        model = self._models.pop(name, None)
        if model is None:
            return False
        await self._drain_and_unload(model)
        return True

    async def _drain_and_unload(self, model: MLModel) -> None:
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while inflight(model) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await self._unload(model)
        settle_heap()

    async def _unload(self, model: MLModel) -> None:
        with model_context(model.settings):
            await asyncio.gather(*[h(model) for h in self._on_unload], return_exceptions=True)
            try:
                model.ready = not await model.unload()
            except Exception:
                logger.exception("model '%s': unload failed", model.name)


async def _warm_up(model: MLModel, request: InferenceRequest) -> None:
    inputs, outputs = declared(model)
    try:
        if inputs:
            check_request(model.name, inputs, request)
        response = await model.predict(request.model_copy(deep=True))
        if outputs:
            check_response(model.name, outputs, request, response)
    except OutputSignatureError as e:
        raise WarmUpError(f"the warm-up request (the declaration's example): {e}") from None
    except Exception as e:
        raise WarmUpError(
            f"the warm-up request (the declaration's example) failed: {type(e).__name__}: {e}"
        ) from None


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
