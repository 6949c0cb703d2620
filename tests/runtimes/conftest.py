from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlserver.types import InferenceRequest, InferenceResponse
from modelyard_runtimes.predictor import PredictorRuntime

from modelyard.declarations.folders import load_model_folder

Loader = Callable[[Path], Awaitable[PredictorRuntime]]


@pytest.fixture
async def load_runtime() -> AsyncIterator[Loader]:
    """Load a model folder into a PredictorRuntime, as the server does; unloaded after."""
    loaded: list[PredictorRuntime] = []

    async def load(folder: Path) -> PredictorRuntime:
        model = PredictorRuntime(load_model_folder(folder))
        assert await model.load()
        loaded.append(model)
        return model

    yield load
    for model in loaded:
        await model.unload()


def v2_request(
    *inputs: dict[str, Any], content_type: str | None = None, outputs: list[str] | None = None
) -> InferenceRequest:
    body: dict[str, Any] = {"inputs": list(inputs)}
    if content_type:
        body["parameters"] = {"content_type": content_type}
    if outputs:
        body["outputs"] = [{"name": n} for n in outputs]
    return InferenceRequest.model_validate(body)


def ids_input(ids: list, name: str = "user_id", datatype: str = "BYTES") -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": [len(ids)], "data": ids}


def output(response: InferenceResponse, name: str) -> list:
    """An output's values, flat; BYTES as str."""
    for out in response.outputs:
        if out.name == name:
            data = out.data.root
            if out.datatype == "BYTES":
                return [v.decode() if isinstance(v, bytes) else v for v in data]
            return list(data)
    raise AssertionError(f"no output {name!r} in {[o.name for o in response.outputs]}")


def is_nan(values: list) -> list[bool]:
    return [bool(np.isnan(v)) for v in values]
