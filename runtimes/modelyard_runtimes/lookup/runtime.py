"""The lookup runtime: a batch-scored model's stored predictions behind V2."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pandas as pd
import sqlalchemy as sa
from fastapi import status
from mlserver.errors import MLServerError
from mlserver.grpc.utils import STATUS_CODE_MAPPING
from mlserver.model import MLModel
from mlserver.types import InferenceRequest, InferenceResponse, Parameters
from pydantic import BaseModel, ConfigDict, Field

from modelyard.serving.tensors import NUMPY_DTYPES
from modelyard.store.connection import PredictionStore
from modelyard.store.runs import RunInfo
from modelyard.store.tables import PREDICTED_AT_COLUMN, StoreError, utc
from modelyard_runtimes.predictor.pipeline import extra_options, model_folder
from modelyard_runtimes.tensors import (
    MISSING_OUTPUT,
    align,
    cast_column,
    decode_ids,
    encode_outputs,
)

logger = logging.getLogger("modelyard.runtimes.lookup")

# How often, at most, the store is asked whether a newer run has completed (the
# environment variable sets it for every lookup model of a server).
DEFAULT_REFRESH_S = 5.0
REFRESH_ENV = "MODELYARD_LOOKUP_REFRESH_S"
# Entities kept in memory per run (an id the run does not have counts as one).
DEFAULT_CACHE_SIZE = 100_000
CACHE_SIZE_ENV = "MODELYARD_LOOKUP_CACHE_SIZE"
FLOAT_KINDS = "fc"


class LookupOptions(BaseModel):
    """``parameters.extra`` of a lookup model (``modelyard serve`` writes them for the
    ``<name>-lookup`` model of every declaration with a ``predictions.store``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str  # the batch-scored model whose runs are looked up
    key: str  # the entity id column, and the request input carrying the ids
    columns: dict[str, str]  # the stored columns answered, name -> V2 datatype
    store: str  # SQLAlchemy URL; ${VAR:-default} expanded at load
    version: str | None = None  # only this version's runs (default: any version's)
    refresh_s: float = Field(
        default_factory=lambda: float(os.environ.get(REFRESH_ENV, DEFAULT_REFRESH_S)), ge=0
    )
    cache_size: int = Field(
        default_factory=lambda: int(os.environ.get(CACHE_SIZE_ENV, DEFAULT_CACHE_SIZE)), ge=0
    )


class NoPredictions(MLServerError):
    """No complete run to answer from (yet): a 503 / UNAVAILABLE saying what to run."""

    def __init__(self, msg: str):
        super().__init__(msg, status_code=status.HTTP_503_SERVICE_UNAVAILABLE)


# MLServer's gRPC server maps only 400, 404, 422 and 500 to gRPC codes and answers
# UNKNOWN for the rest; a 503 is what gRPC calls UNAVAILABLE (retry later).
STATUS_CODE_MAPPING.setdefault(status.HTTP_503_SERVICE_UNAVAILABLE, grpc.StatusCode.UNAVAILABLE)


_MISSING = object()


@dataclass
class _Snapshot:
    """One complete run, its table, and the entities already read from it (LRU)."""

    run: RunInfo
    table: sa.Table
    size: int
    cache: OrderedDict[Any, Any] = field(default_factory=OrderedDict)

    @property
    def identity(self) -> tuple:
        return (self.run.version, self.run.run_id, self.run.finished_at)

    def get(self, key: Any) -> Any:
        value = self.cache.get(key, None)
        if value is not None:
            self.cache.move_to_end(key)
        return value

    def put(self, key: Any, value: Any) -> None:
        if self.size == 0:
            return
        self.cache[key] = value
        self.cache.move_to_end(key)
        while len(self.cache) > self.size:
            self.cache.popitem(last=False)


class LookupRuntime(MLModel):
    """Answers requests carrying entity ids with the stored predictions of the latest
    *complete* batch run: one row per id in request order, the declared columns, the
    row's ``predicted_at`` (ISO 8601, UTC) and ``missing`` for the ids the run has no
    row for. The response's parameters name the run (``run_id``, ``run_version``).

    A run once complete never changes, so its rows are cached; every ``refresh_s`` at
    most, the store is asked for the latest complete run, and a newer one replaces
    the cache: a new run is served without a restart.
    """

    async def load(self) -> bool:
        self._options = extra_options(LookupOptions, self.settings)
        options = self._options
        self._folder = model_folder(self.settings)
        self._datatypes = {
            **options.columns,
            options.key: options.columns.get(options.key, "BYTES"),
            PREDICTED_AT_COLUMN: "BYTES",
            MISSING_OUTPUT: "BOOL",
        }
        self._values = [c for c in options.columns if c != options.key]
        # The store is opened at the first request: the model serves (and says why it
        # cannot answer yet) before the first batch run has created it.
        self._store: PredictionStore | None = None
        self._snapshot: _Snapshot | None = None
        self._failure: NoPredictions | None = None
        self._checked_at = -math.inf
        self._refreshing = asyncio.Lock()
        return True

    async def unload(self) -> bool:
        if getattr(self, "_store", None) is not None:
            await asyncio.to_thread(self._store.close)  # type: ignore[union-attr]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        options = self._options
        ids = decode_ids(self.name, options.key, payload)
        key_type = self._datatypes[options.key]
        ids = cast_column(self.name, options.key, np.asarray(ids, dtype=object), key_type).tolist()
        snapshot = await self._current()
        values = {i: snapshot.get(i) for i in dict.fromkeys(ids)}  # None: not cached
        wanted = [i for i, v in values.items() if v is None]
        if wanted:
            # Cached as answered: the timestamp already in ISO 8601, UTC.
            found = {
                row[0]: (*row[1:-1], utc(row[-1]).astimezone(UTC).isoformat())
                for row in await self._read(snapshot, wanted)
            }
            for i in wanted:
                values[i] = found.get(i, _MISSING)
                snapshot.put(i, values[i])
        known = [(i, *v) for i, v in values.items() if v is not _MISSING]
        aligned = align(ids, self._frame(known), options.key)
        results = {str(c): aligned[c] for c in aligned.columns}
        outputs = encode_outputs(
            self.name, results, self.settings.outputs or [], self._datatypes, payload.outputs
        )
        run = snapshot.run
        parameters = Parameters(
            run_id=run.run_id,
            run_version=run.version,
            run_finished_at=run.finished_at.isoformat() if run.finished_at else None,
        )
        return InferenceResponse(
            model_name=self.name, model_version=self.version, outputs=outputs,
            parameters=parameters,
        )  # fmt: skip

    def _frame(self, rows: Sequence[tuple]) -> pd.DataFrame:
        """The found rows as typed columns: key, values, predicted_at (ISO text)."""
        key = self._options.key
        names = [key, *self._values]
        columns = list(zip(*rows, strict=True)) if rows else [()] * (len(names) + 1)
        frame: dict[str, Any] = {}
        for name, values in zip(names, columns, strict=False):
            datatype = self._datatypes[name]
            array = np.array(values, dtype=object)
            if np.dtype(NUMPY_DTYPES[datatype]).kind not in FLOAT_KINDS and datatype != "BYTES":
                # A NULL (a column added after this run was written) reads as 0 / false.
                array[array == None] = 0  # noqa: E711
            frame[name] = cast_column(self.name, name, array, datatype)
        frame[PREDICTED_AT_COLUMN] = np.array(columns[-1], dtype=object)
        return pd.DataFrame(frame)

    # -- the store -------------------------------------------------------------------
    async def _current(self) -> _Snapshot:
        """The snapshot of the latest complete run, asked for at most every refresh_s."""
        if self._due():
            async with self._refreshing:
                if self._due():
                    await asyncio.to_thread(self._refresh)
        if self._snapshot is None:
            raise self._failure or NoPredictions(f"model '{self.name}': no run read yet")
        return self._snapshot

    def _due(self) -> bool:
        return time.monotonic() - self._checked_at >= self._options.refresh_s

    def _refresh(self) -> None:
        started = time.monotonic()
        snapshot: _Snapshot | None
        failure: NoPredictions | None
        try:
            snapshot, failure = self._latest(), None
        except NoPredictions as e:
            snapshot, failure = None, e
        except StoreError as e:
            snapshot, failure = self._snapshot, None
            if snapshot is None:
                failure = NoPredictions(f"model '{self.name}': {e}")
            else:  # keep answering what is cached; look again after refresh_s
                logger.warning("model '%s': %s; still answering from run %s", self.name, e,
                               snapshot.run.run_id)  # fmt: skip
        self._snapshot, self._failure = snapshot, failure
        # Last: the requests that skip the lock must find what this refresh set.
        self._checked_at = started

    def _latest(self) -> _Snapshot:
        options = self._options
        store = self._open()
        run = store.ledger.latest_run(options.model, options.version)
        if run is None:
            which = f"version {options.version} of " if options.version else ""
            raise NoPredictions(
                f"model '{self.name}': no complete batch run of {which}model '{options.model}' "
                f"in {store.describe()} yet; run `modelyard batch run {self._folder}`"
            )
        current = self._snapshot
        if current is not None and current.identity == (run.version, run.run_id, run.finished_at):
            return current
        table = store.tables.reflect(run.table)
        absent = [c for c in [options.key, *self._values] if table is None or c not in table.c]
        if absent:
            raise NoPredictions(
                f"model '{self.name}': the latest complete run {run.run_id} (version "
                f"{run.version}) has no column {', '.join(repr(c) for c in absent)} in "
                f"{run.table}; run the batch for the current version"
            )
        assert table is not None
        logger.info(
            "model '%s': answering from run %s of model '%s' version %s (%d rows)",
            self.name, run.run_id, run.model, run.version, run.rows,
        )  # fmt: skip
        return _Snapshot(run, table, options.cache_size)

    def _open(self) -> PredictionStore:
        if self._store is None:
            store = PredictionStore.open(self._options.store, self._folder, writer=False)
            database = store.url.database
            if store.dialect == "sqlite" and database and not Path(database).exists():
                store.close()
                raise StoreError(
                    f"no batch run has written {store.describe()} yet; run "
                    f"`modelyard batch run {self._folder}`"
                )
            self._store = store
        return self._store

    async def _read(self, snapshot: _Snapshot, ids: list[Any]) -> list[sa.Row]:
        store = self._store
        assert store is not None
        try:
            return await asyncio.to_thread(
                store.predictions.read,
                snapshot.table,
                snapshot.run,
                self._options.key,
                ids,
                self._values,
            )
        except StoreError as e:
            raise NoPredictions(f"model '{self.name}': {e}") from None
