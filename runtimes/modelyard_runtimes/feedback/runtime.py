"""The feedback runtime: ground truth for a served model's predictions, over V2."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from fastapi import status
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.errors import InferenceError, MLServerError
from mlserver.model import MLModel
from mlserver.types import InferenceRequest, InferenceResponse, RequestInput, ResponseOutput
from pydantic import BaseModel, ConfigDict

from modelyard.declarations.monitoring import QualityConfig
from modelyard.quality.labels import LABEL, OBSERVED_AT, REQUEST_ID, ROW, LabelError, label_frame
from modelyard.quality.tables import ENTITY, REQUEST, QualityStore
from modelyard.store.tables import StoreError
from modelyard_runtimes.predictor.pipeline import extra_options, model_folder


class FeedbackOptions(BaseModel):
    """``parameters.extra`` of a feedback model (``modelyard serve`` writes them for the
    ``<name>-feedback`` model of every model with a store)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str  # the model whose predictions the labels judge
    store: str  # SQLAlchemy URL; ${VAR:-default} expanded at load
    key: str | None = None  # the entity id of its batch predictions, if it has any
    task: str | None = None  # classification or regression (regression labels are numbers)


class StoreUnavailable(MLServerError):
    def __init__(self, msg: str):
        super().__init__(msg, status_code=status.HTTP_503_SERVICE_UNAVAILABLE)


class FeedbackRuntime(MLModel):
    """Stores labels sent as V2 tensors, one label per row:

    - ``request_id`` (BYTES): the ``id`` of the online response the label judges, with
      ``row`` (integers, optional, default 0) for a row of a batched request; or the
      entity id input named after the model's key (e.g. ``user_id``), for its batch
      predictions;
    - ``label``: the truth (text, numbers or booleans);
    - ``observed_at`` (BYTES, optional): when the truth was observed, ISO 8601; now
      when left out.

    Answers ``received`` (labels in the request) and ``changed`` (new, or a different
    label replacing an older observation: sending the same label twice changes
    nothing) once the labels are committed to the store.
    """

    async def load(self) -> bool:
        options = extra_options(FeedbackOptions, self.settings)
        self._config = QualityConfig(
            model=options.model,
            version=self.version or "",
            folder=model_folder(self.settings),
            store=options.store,
            key=options.key,
            task=options.task,
        )
        keys = [k for k in (REQUEST_ID, options.key) if k]
        self._inputs = [*keys, LABEL, OBSERVED_AT, ROW]
        self._keys = keys
        # Opened at the first labels: loading never creates a database.
        self._store: QualityStore | None = None
        return True

    async def unload(self) -> bool:
        if getattr(self, "_store", None) is not None:
            await asyncio.to_thread(self._store.close)  # type: ignore[union-attr]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        given = {i.name: i for i in payload.inputs}
        unknown = [n for n in given if n not in self._inputs]
        if unknown:
            raise InferenceError(
                f"model '{self.name}': unknown input {', '.join(repr(n) for n in unknown)}; "
                f"it takes {' or '.join(repr(k) for k in self._keys)}, {LABEL!r}, and "
                f"optionally {OBSERVED_AT!r} (ISO 8601) and {ROW!r} (with {REQUEST_ID!r})"
            )
        keys = [k for k in self._keys if k in given]
        if len(keys) != 1:
            raise InferenceError(
                f"model '{self.name}': send exactly one of "
                f"{', '.join(repr(k) for k in self._keys)}: the ids the labels are for"
            )
        key = keys[0]
        if LABEL not in given:
            raise InferenceError(f"model '{self.name}': missing input {LABEL!r}, the labels")
        if ROW in given and key != REQUEST_ID:
            raise InferenceError(f"model '{self.name}': {ROW!r} goes with {REQUEST_ID!r} only")
        columns = {n: self._decode(t) for n, t in given.items()}
        lengths = {n: len(v) for n, v in columns.items()}
        if len(set(lengths.values())) > 1:
            raise InferenceError(
                f"model '{self.name}': inputs have different lengths "
                f"({', '.join(f'{n}: {k}' for n, k in lengths.items())}); send one value "
                "of each per label"
            )
        try:
            frame = label_frame(
                self._config,
                REQUEST if key == REQUEST_ID else ENTITY,
                columns[key],
                columns[LABEL],
                columns.get(OBSERVED_AT),
                columns.get(ROW),
                first=0,
            )
        except LabelError as e:
            raise InferenceError(str(e)) from None
        try:
            result = await asyncio.to_thread(self._write, frame)
        except StoreError as e:
            raise StoreUnavailable(f"model '{self.name}': labels not stored: {e}") from None
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[
                ResponseOutput(name=n, shape=[1], datatype="INT64", data=[v])
                for n, v in (("received", result.received), ("changed", result.changed))
            ],
        )

    def _write(self, frame: Any) -> Any:
        if self._store is None:
            self._store = QualityStore.open(self._config)
        return self._store.write_labels(self._config.model, frame)

    def _decode(self, tensor: RequestInput) -> list[Any]:
        try:
            if tensor.datatype == "BYTES":
                return list(StringCodec.decode_input(tensor))
            return np.asarray(NumpyCodec.decode_input(tensor)).ravel().tolist()
        except (ValueError, TypeError, UnicodeDecodeError) as e:
            raise InferenceError(
                f"model '{self.name}': cannot read input '{tensor.name}': {e}"
            ) from None
