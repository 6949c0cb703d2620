"""One batch run of one model: the declared features SQL streamed in chunks, scored by
the predictor runtime's own pipeline (the code that answers online), upserted into
the prediction store.

- Memory is bounded by the chunk size, whatever the table's: the source hands rows
  over a chunk at a time, and at most ``WRITES_IN_FLIGHT`` scored chunks wait for the
  store (written on a thread of their own while the next chunk is scored; a server's
  rows are read ahead on another).
- ``Shard(i, n)`` scores the entities whose key hashes to ``i`` (``modelyard.batch.shards``:
  MD5 of the key's text, modulo ``n``), filtered by the features database itself, so
  each shard reads only its part: the same partition in every process and every run,
  and the n pods of a Kubernetes Indexed Job split one run between them.
- A row the model cannot score (a feature that does not decode, say) is found by
  halving the chunk that failed until the culprit is alone; bad rows are counted,
  logged and recorded in the store, and fail the run once there are more than
  ``max_bad_rows``.
- Atomic and idempotent (see ``modelyard.store.runs``): rows are upserted on (model,
  version, run, entity), and the run becomes readers' latest only when its last
  shard completes; a run that fails or is killed is never the latest, and running it
  again with the same id completes it.
"""

from __future__ import annotations

import functools
import importlib
import logging
import queue
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import sqlalchemy as sa
from mlserver.errors import MLServerError
from mlserver.settings import ModelSettings

from modelyard.batch import DEFAULT_CHUNK_ROWS
from modelyard.batch.progress import BarReporter, count_in_background, reporter
from modelyard.batch.shards import shard_of
from modelyard.declarations.folders import (
    MARKER_FILENAMES,
    load_model_folder,
    resolve_model_folder,
)
from modelyard.errors import ModelCodeFailed, ModelyardError
from modelyard.store.connection import PredictionStore
from modelyard.store.runs import RunInfo, RunStatus
from modelyard.store.tables import PredictionsSpec, StoreError, now

logger = logging.getLogger("modelyard.batch")

# Scored chunks waiting for the store, and chunks read ahead of scoring: they bound
# memory while reads and writes overlap scoring.
WRITES_IN_FLIGHT = 2
READ_AHEAD = 1
# Feature sources read on the scoring thread: engines embedded in this process compute
# on its own cores, so a reading thread only competes with scoring (on 2 cores DuckDB
# streamed 12% more rows/s in line). A server's rows (PostgreSQL) arrive over the
# network and are fetched on a thread of their own while the last chunk is scored.
EMBEDDED_SOURCES = ("sqlite", "duckdb")
# The GIL switch interval while a run streams: the writer thread takes the GIL back
# between its statements, and Python's default 5 ms keeps it waiting behind scoring.
SWITCH_INTERVAL_S = 0.0005
# Bad rows named in the log (all of them are in the store's bad-rows table).
LOGGED_BAD_ROWS = 10
# Scores a model on any V2 runtime (sklearn, xgboost, ...) from its declaration alone.
RUNTIME_BATCH = "modelyard_runtimes.runtime_batch.RuntimeBatch"
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,62}")


class BatchError(ModelyardError):
    """The run cannot start or did not complete; the message says why and what to do."""


def default_run_id(at: datetime | None = None) -> str:
    """A run id from the time (UTC), e.g. ``20250101T030000Z``: sorts as it runs."""
    return (at or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")


@dataclass(frozen=True)
class Shard:
    """Part ``index`` (0 to count-1, as Kubernetes numbers Job completions) of ``count``."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(
                f"shard {self.index}/{self.count}: the index goes from 0 to count - 1 "
                "(e.g. 0/3, 1/3, 2/3)"
            )

    @classmethod
    def parse(cls, text: str) -> Shard:
        index, sep, count = text.partition("/")
        if not sep or not index.strip().isdigit() or not count.strip().isdigit():
            raise ValueError(f"{text!r} is not a shard i/n such as 0/3")
        return cls(int(index), int(count))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def mask(self, keys: Sequence[Any]) -> np.ndarray:
        """Which of ``keys`` belong to this shard (the database filters a run's rows
        by the same definition)."""
        return np.fromiter(
            (shard_of(k, self.count) == self.index for k in keys), dtype=bool, count=len(keys)
        )

    @property
    def part(self) -> tuple[int, int]:
        return self.index, self.count


@dataclass(frozen=True)
class RunOptions:
    run_id: str | None = None
    shard: Shard = Shard()
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    max_bad_rows: int = 0
    bar: bool | None = None  # None: a bar on a terminal, log lines elsewhere
    count: bool | None = None  # count the rows first for an ETA; None: with the bar


@dataclass
class RunResult:
    model: str
    version: str
    run_id: str
    shard: Shard
    rows: int = 0
    bad_rows: int = 0
    read: int = 0
    seconds: float = 0.0  # streaming: read, score, write
    load_seconds: float = 0.0  # the model, before the first row
    run: RunInfo | None = None
    error: str | None = None
    exported: str | None = None  # where the complete run was exported
    bad_examples: list[tuple[Any, str]] = field(default_factory=list)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        head = (
            f"model '{self.model}' version {self.version} run {self.run_id} shard {self.shard}: "
            f"{self.rows:,} rows in {self.seconds:.2f} s ({self.rows_per_s:,.0f} rows/s; "
            f"model loaded in {self.load_seconds:.2f} s), {self.bad_rows:,} bad rows"
        )
        if self.error is not None:
            return f"{head}; FAILED: {self.error}"
        run = self.run
        assert run is not None
        if run.status == RunStatus.COMPLETE:
            exported = f", exported to {self.exported}" if self.exported else ""
            return f"{head}; run complete ({run.rows:,} rows, {run.shards} shard(s)){exported}"
        return f"{head}; run {run.status} ({run.shards_done}/{run.shards} shards complete)"


@runtime_checkable
class BatchRuntime(Protocol):
    """What a batch run needs of the runtime class a model's settings name: the options
    it reads from them and the pipeline it scores with, the ones it answers with online
    (``modelyard_runtimes.predictor.PredictorRuntime``). The class is imported by its
    name, as the server imports it: the runtimes depend on modelyard, never the reverse."""

    batch_options: Callable[[ModelSettings], Any]
    batch_pipeline: Callable[[ModelSettings], Any]


class BatchJob:
    """The batch scoring of one model folder (a declaration of any runtime with
    ``features`` and ``predictions``)."""

    def __init__(self, target: Path):
        folder = resolve_model_folder(target)
        if folder is None:
            raise BatchError(
                f"{target} is not a model folder or its declaration; name a folder holding a "
                f"{' or '.join(MARKER_FILENAMES)}"
            )
        self.folder = folder
        self.settings: ModelSettings = load_model_folder(self.folder)
        name = self.settings.name
        runtime = _batch_runtime(self.settings)
        if runtime is None:
            raise BatchError(
                f"model '{name}' ({_implementation(self.settings)}) declares no features and "
                "predictions; a batch run streams features.sql through the model into "
                "predictions.store: add features (sql, source, key) and predictions (columns, "
                "store, and outputs unless runtime: predictor)"
            )
        self.runtime = runtime
        options = runtime.batch_options(self.settings)
        predictions = options.predictions
        extra = predictions.model_extra or {}
        if options.features is None:
            raise BatchError(
                f"model '{name}' declares no features; a batch run streams features.sql, "
                "so add features (sql, source, key)"
            )
        if not predictions.columns or not extra.get("store"):
            raise BatchError(
                f"model '{name}' declares no predictions.columns and predictions.store; add "
                "them, e.g. store: ${PREDICTIONS_DB_URL:-sqlite:///predictions.db}"
            )
        version = self.settings.version
        if not version:
            raise BatchError(f"model '{name}' has no version; declare one (version: 1.0.0)")
        self.spec = PredictionsSpec.of(name, version, options.features.key, predictions.columns)
        self.store_url: str = extra["store"]
        self.shards: int | None = extra.get("shards")
        self.keep_runs: int | None = extra.get("keep_runs")
        self.export: dict[str, Any] | None = extra.get("export")
        self.schedule: str | None = extra.get("schedule")

    def open_store(self, writer: bool = True) -> PredictionStore:
        return PredictionStore.open(self.store_url, self.folder, writer=writer)

    def run(self, options: RunOptions) -> RunResult:
        """Score this shard of the run; a RunResult with ``error`` set when it failed
        (the store records it, and the run is not the latest)."""
        run_id = options.run_id or default_run_id()
        if not RUN_ID.fullmatch(run_id):
            raise BatchError(
                f"run id {run_id!r}: use letters, digits, '.', '_', ':' and '-' "
                "(at most 63, starting with a letter or digit)"
            )
        if options.shard.count > 1 and options.run_id is None:
            raise BatchError(
                f"shard {options.shard} needs --run-id, the same for every shard of the run "
                "(e.g. the Kubernetes Job's name)"
            )
        if options.chunk_rows < 1:
            raise BatchError(f"--chunk-rows {options.chunk_rows}: give at least 1")
        spec = self.spec
        result = RunResult(spec.model, spec.version, run_id, options.shard)
        store = self.open_store()
        try:
            table = store.tables.ensure(spec)
            store.ledger.start_shard(spec, run_id, options.shard.index, options.shard.count)
            logger.info(
                "model '%s' version %s: run %s shard %s into %s",
                spec.model, spec.version, run_id, options.shard, store.describe(),
            )  # fmt: skip
            try:
                _Scoring(self, store, table, run_id, options, result).run()
            except (Exception, KeyboardInterrupt) as e:
                result.error = _reason(e)
                try:
                    result.run = store.ledger.fail_shard(
                        spec, run_id, options.shard.index, result.error, result.rows,
                        result.bad_rows,
                    )  # fmt: skip
                except StoreError as recording:
                    result.error += f" (and recording the failure failed: {recording})"
                if isinstance(e, KeyboardInterrupt):
                    raise
                return result
            result.run = store.ledger.finish_shard(
                spec, run_id, options.shard.index, result.rows, result.bad_rows
            )
            if result.run.status == RunStatus.COMPLETE:
                self._after_complete(store, result)
            return result
        finally:
            store.close()

    def _after_complete(self, store: PredictionStore, result: RunResult) -> None:
        """What the declaration asks for once a run is complete (by whichever shard
        completes it): older runs dropped (``keep_runs``), the run exported (``export``).
        A failure here fails the command, not the run: it stays complete and the latest."""
        run = result.run
        assert run is not None
        try:
            if self.keep_runs:
                for dropped in store.keep_runs(self.spec.model, self.keep_runs):
                    logger.info(
                        "model '%s': dropped run %s (version %s, %d rows): keep_runs %d",
                        dropped.model, dropped.run_id, dropped.version, dropped.rows,
                        self.keep_runs,
                    )  # fmt: skip
            if self.export:
                from modelyard.store.export import Filter, export_run

                exported = export_run(
                    store, run, self.export["to"], self.export.get("format", "parquet"),
                    [Filter.parse(w) for w in self.export.get("where", [])],
                )  # fmt: skip
                result.exported = exported.path
                logger.info("model '%s': run %s exported to %s (%d rows)",
                            run.model, run.run_id, exported.path, exported.rows)  # fmt: skip
        except (ModelyardError, StoreError) as e:
            result.error = f"run {run.run_id} is complete, but: {e}"


class _Scoring:
    """The streaming loop of one shard, with its writer thread and bad-row budget."""

    def __init__(
        self, job: BatchJob, store: PredictionStore, table: sa.Table, run_id: str,
        options: RunOptions, result: RunResult,
    ):  # fmt: skip
        self.job = job
        self.store = store
        self.table = table
        self.run_id = run_id
        self.options = options
        self.result = result
        self.key = job.spec.key
        from modelyard.quality.drift import BatchSample

        # With a drift reference: a uniform sample of the inputs and outputs, kept for
        # `modelyard drift` and the server's modelyard_drift gauges.
        self.sample = BatchSample.of(job.settings)

    def run(self) -> None:
        pipeline = self.job.runtime.batch_pipeline(self.job.settings)
        self.pipeline = pipeline
        started = time.perf_counter()
        try:
            pipeline.load()
            self.result.load_seconds = time.perf_counter() - started
            started = time.perf_counter()
            features = pipeline.features
            assert features is not None
            shard = self.options.shard
            label = self.job.spec.model + (f" shard {shard}" if shard.count > 1 else "")
            report = reporter(label, self.options.bar)
            count = self.options.count
            if count is None:
                count = isinstance(report, BarReporter)
            if count:
                count_in_background(functools.partial(features.count, shard.part), report)
            switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(SWITCH_INTERVAL_S)
            try:
                with _Writer(self.store, self.table, self.job.spec, self.run_id) as writer:
                    assert features.url is not None
                    chunks = functools.partial(
                        features.iter_all, self.options.chunk_rows, shard.part
                    )
                    in_line = features.url.get_backend_name() in EMBEDDED_SOURCES
                    for chunk in chunks() if in_line else _read_ahead(chunks):
                        self.result.read += len(chunk)
                        scores = self._score(chunk)
                        self.result.rows += len(scores)
                        writer.submit(scores)
                        if self.sample is not None:
                            self.sample.add_scored(chunk, scores, self.key)
                        report.update(self.result.read, self.result.rows, self.result.bad_rows)
                if self.sample is not None:
                    spec = self.job.spec
                    self.sample.write(self.store.engine, spec.model, spec.version, self.run_id,
                                      shard.index)  # fmt: skip
            finally:
                sys.setswitchinterval(switch_interval)
                report.close()
        finally:
            self.result.seconds = time.perf_counter() - started
            pipeline.close()

    def _score(self, chunk: pd.DataFrame) -> pd.DataFrame:
        bad: list[tuple[Any, str]] = []
        nulls = chunk[self.key].isna().to_numpy()
        if nulls.any():
            bad += [(None, f"the key {self.key} is NULL")] * int(nulls.sum())
            chunk = chunk[~nulls]
        # One row per key, as online (a repeat across chunks overwrites the first).
        repeats = chunk[self.key].duplicated().to_numpy()
        if repeats.any():
            message = (
                f"{self.job.spec.model}'s features.sql returned several rows for this "
                f"{self.key}; it must return one row per {self.key} (GROUP BY {self.key})"
            )
            bad += [(k, message) for k in chunk[self.key][repeats].tolist()]
            chunk = chunk[~repeats]
        try:
            scores = self.pipeline.score(chunk)
        except (MLServerError, ModelCodeFailed):
            scores = self._isolate(chunk, bad)
        self._bad(bad)
        return scores

    def _isolate(self, chunk: pd.DataFrame, bad: list[tuple[Any, str]]) -> pd.DataFrame:
        """Score ``chunk`` by halves until the rows that fail are alone."""
        parts: list[pd.DataFrame] = []
        found: list[tuple[Any, str]] = []

        def split(frame: pd.DataFrame, error: MLServerError | ModelCodeFailed | None) -> None:
            if error is not None and len(frame) == 1:
                found.append((frame[self.key].iloc[0], str(error)))
                self._budget(len(bad) + len(found), found)
                return
            mid = max(len(frame) // 2, 1)
            for half in (frame.iloc[:mid], frame.iloc[mid:]):
                if half.empty:
                    continue
                try:
                    parts.append(self.pipeline.score(half))
                except (MLServerError, ModelCodeFailed) as e:
                    split(half, e)

        with _quiet("modelyard.runtimes"):
            split(chunk, None)
        if len(found) == len(chunk) > 1:
            raise BatchError(
                f"every one of {len(chunk):,} rows failed to score, e.g. {found[0][0]!r}: "
                f"{found[0][1]}; the model, not the data, is at fault"
            )
        bad.extend(found)
        return pd.concat(parts) if parts else self.pipeline.score(chunk.iloc[:0])

    def _budget(self, pending: int, found: list[tuple[Any, str]]) -> None:
        total = self.result.bad_rows + pending
        if total > self.options.max_bad_rows:
            examples = (self.result.bad_examples + found)[:3]
            named = "; ".join(f"{k!r}: {e}" for k, e in examples)
            raise BatchError(
                f"{total:,} bad row(s), more than --max-bad-rows {self.options.max_bad_rows} "
                f"allows ({named}); fix the features or raise --max-bad-rows"
            )

    def _bad(self, bad: list[tuple[Any, str]]) -> None:
        if not bad:
            return
        self._budget(len(bad), bad)
        for entity, error in bad:
            if len(self.result.bad_examples) < LOGGED_BAD_ROWS:
                logger.warning("bad row %s %r: %s", self.key, entity, error)
            self.result.bad_examples.append((entity, error))
            del self.result.bad_examples[LOGGED_BAD_ROWS:]
        self.result.bad_rows += len(bad)
        self.store.ledger.record_bad_rows(
            self.job.spec, self.run_id, self.options.shard.index,
            [(e if e is not None else "<NULL>", err) for e, err in bad],
        )  # fmt: skip


class _Writer:
    """Upserts scored chunks on a thread of its own, at most WRITES_IN_FLIGHT behind."""

    def __init__(self, store: PredictionStore, table: sa.Table, spec: PredictionsSpec, run_id: str):
        self.write: Callable[[pd.DataFrame], int] = lambda frame: store.predictions.write(
            table, spec, run_id, frame, now()
        )
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-writer")
        self.pending: deque[Future[int]] = deque()

    def submit(self, frame: pd.DataFrame) -> None:
        while len(self.pending) >= WRITES_IN_FLIGHT:
            self.pending.popleft().result()  # a failed write stops the run here
        self.pending.append(self.pool.submit(self.write, frame))

    def __enter__(self) -> _Writer:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: Any) -> None:
        try:
            if kind is None:
                while self.pending:
                    self.pending.popleft().result()
            else:
                for future in self.pending:
                    future.cancel()
        finally:
            self.pool.shutdown(wait=True)


def _read_ahead(source: Callable[[], Iterator[pd.DataFrame]]) -> Iterator[pd.DataFrame]:
    """The chunks of ``source``, fetched on a thread of its own one chunk ahead, so the
    database (DuckDB, PostgreSQL...) works while the current chunk is scored."""
    ahead: queue.Queue[Any] = queue.Queue(maxsize=READ_AHEAD)
    stop = threading.Event()
    end = object()

    def produce() -> None:
        chunks = source()  # runs on this thread only, start to end
        try:
            for chunk in chunks:
                while not stop.is_set():
                    with suppress(queue.Full):
                        ahead.put(chunk, timeout=0.1)
                        break
                if stop.is_set():
                    return
            ahead.put(end)
        except BaseException as e:
            ahead.put(e)
        finally:
            chunks.close()  # type: ignore[attr-defined]

    thread = threading.Thread(target=produce, name="batch-reader", daemon=True)
    thread.start()
    try:
        while (item := ahead.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            with suppress(queue.Empty):
                ahead.get(timeout=0.1)
        thread.join()


@contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Mute a logger while failing rows are isolated: the runtime logs each failure of
    the user's code with its traceback, and halving a chunk fails many times over."""
    log = logging.getLogger(name)
    disabled = log.disabled
    log.disabled = True
    try:
        yield
    finally:
        log.disabled = disabled


def _reason(e: BaseException) -> str:
    if isinstance(e, KeyboardInterrupt):
        return "interrupted (SIGINT or SIGTERM) before the end; run it again with the same run id"
    if isinstance(e, ModelyardError | MLServerError | StoreError):
        return str(e)
    if isinstance(e, RuntimeError | FileNotFoundError | TypeError | ValueError):
        # How the pipeline reports a model that does not load (source down, bad SQL...).
        return str(e)
    return f"{type(e).__name__}: {e}"


def _implementation(settings: ModelSettings) -> str:
    return settings.implementation_


def _batch_runtime(settings: ModelSettings) -> BatchRuntime | None:
    """The runtime class ``settings`` name, when it scores batches itself; else, for a
    model declaring features and predictions, the runtime-agnostic pipeline that drives
    its runtime (``RUNTIME_BATCH``)."""
    extra = (settings.parameters.extra if settings.parameters else None) or {}
    own = _import(settings.implementation_)
    if isinstance(own, type) and isinstance(own, BatchRuntime):
        return own
    if not (extra.get("features") and extra.get("predictions")):
        return None
    return _import(RUNTIME_BATCH)


def _import(path: str) -> Any:
    # Imported without ModelSettings.implementation, which reloads the module.
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None
