"""The quality and batch gauges of the served models, refreshed from their stores.

The server that serves the metrics endpoint runs ``QualityExporter.run``: every
``MODELYARD_QUALITY_REFRESH_S`` seconds (default 60), for each loaded model with a
store, it recomputes the metric windows whose labels changed (the same computation as
``modelyard metrics``, stored the same way, so both show the same numbers), sets
``modelyard_model_metric`` from the latest day and week, and sets the batch gauges from
the store's runs table. The runs table is the record of every batch run (the CronJob's
pods come and go, and no Pushgateway is needed): whichever server serves the model
exports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import sqlalchemy as sa
from mlserver.model import MLModel
from mlserver.settings import ModelSettings

from modelyard.declarations.monitoring import QualityConfig
from modelyard.quality import metrics
from modelyard.quality.evaluate import Evaluator
from modelyard.quality.tables import QualityStore
from modelyard.store.runs import RunStatus
from modelyard.store.tables import RUNS_TABLE, utc

logger = logging.getLogger("modelyard.quality")

REFRESH_ENV = "MODELYARD_QUALITY_REFRESH_S"
DEFAULT_REFRESH_S = 60.0


def refresh_interval() -> float:
    return float(os.environ.get(REFRESH_ENV, DEFAULT_REFRESH_S))


def export_metrics(config: QualityConfig, frame: pd.DataFrame) -> None:
    """Set the model-quality gauges from stored metrics (``Evaluator.stored``): per
    version and window kind, the latest window's."""
    if frame.empty:
        return
    latest = frame.groupby(["version", "window"])["start"].transform("max")
    for row in frame[frame["start"] == latest].to_dict("records"):
        labels = dict(model=config.model, version=row["version"], window=row["window"])
        if row["value"] is not None and not pd.isna(row["value"]):
            metrics.MODEL_METRIC.labels(
                **labels, metric=row["metric"], **{"class": row["class"]}
            ).set(row["value"])
        metrics.MODEL_METRIC_SAMPLES.labels(**labels).set(row["window_samples"])
        metrics.MODEL_METRIC_WINDOW.labels(**labels).set(row["start"].timestamp())


def export_runs(config: QualityConfig, store: QualityStore, schedule: str | None) -> None:
    """Set the batch gauges of ``config.model`` from the runs table."""
    if schedule:
        from croniter import croniter

        due = croniter(schedule, datetime.now(UTC)).get_prev(datetime)
        metrics.BATCH_LAST_DUE.labels(model=config.model).set(due.timestamp())
    runs = store.store.runs
    r = runs.c
    with store.errors("reading its runs"), store.engine.connect() as conn:
        if not sa.inspect(conn).has_table(RUNS_TABLE):
            return
        rows = conn.execute(
            sa.select(r.version, r.status, r.rows, r.started_at, r.finished_at)
            .where(r.model == config.model)
            .order_by(r.started_at)
        ).all()
    counts: dict[tuple[str, str], int] = {}
    for row in rows:
        counts[(row.version, row.status)] = counts.get((row.version, row.status), 0) + 1
        labels = dict(model=config.model, version=row.version)
        # Rows come oldest first: the last one written per version is the latest.
        metrics.BATCH_LAST_FAILED.labels(**labels).set(int(row.status == RunStatus.FAILED))
    for version in {v for v, _ in counts}:
        for status in RunStatus:
            metrics.BATCH_RUNS.labels(model=config.model, version=version, status=status).set(
                counts.get((version, status), 0)
            )
    complete = [row for row in rows if row.status == RunStatus.COMPLETE and row.finished_at]
    for row in sorted(complete, key=lambda row: utc(row.finished_at)):
        labels = dict(model=config.model, version=row.version)
        finished = utc(row.finished_at)
        metrics.BATCH_LAST_SUCCESS.labels(**labels).set(finished.timestamp())
        metrics.BATCH_LAST_ROWS.labels(**labels).set(row.rows)
        metrics.BATCH_LAST_DURATION.labels(**labels).set(
            (finished - utc(row.started_at)).total_seconds()
        )


def export_drift(config: QualityConfig, store: QualityStore, cache: Any = None) -> None:
    """Set ``modelyard_drift`` of the served version (day, week and the last N logged
    requests) and of the latest batch run: the same computation as ``modelyard drift``
    (``cache``: a ``drift.PayloadCache`` kept from one refresh to the next)."""
    from modelyard.quality import drift

    windows = [drift.DAY, drift.WEEK, drift.last_window()]
    frame = drift.drift(config, store, windows, cache=cache)
    now: set[tuple[str, ...]] = set()
    for labels, statistic, value in drift.statistics_of(frame):
        series = metrics.DRIFT.labels(model=config.model, statistic=statistic, **labels)
        series.set(value)
        now.add((labels["version"], labels["feature"], statistic, labels["window"]))
    # A series no longer computed (a new day without requests yet, a feature no longer
    # sent) is NaN rather than its last value: no alert holds on a number of the past.
    for version, feature, statistic, window in _drift_series.get(config.model, set()) - now:
        metrics.DRIFT.labels(
            model=config.model, version=version, feature=feature, statistic=statistic,
            window=window,
        ).set(float("nan"))  # fmt: skip
    _drift_series[config.model] = now


# The drift series each model's last refresh set: (version, feature, statistic, window).
_drift_series: dict[str, set[tuple[str, ...]]] = {}


class Models(Protocol):
    """What the exporter reads of a server: the models it serves."""

    async def get_models(self) -> list[MLModel]: ...


class QualityExporter:
    """Refreshes the gauges of every loaded model with a store, in the background."""

    def __init__(self, models: Models, interval: float | None = None):
        self.models = models
        self.interval = refresh_interval() if interval is None else interval
        self._stores: dict[tuple[str, str], QualityStore] = {}
        self._reported: dict[str, str] = {}
        self._payloads: Any = None  # the logged requests drift has parsed so far

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            targets = []
            for model in await self.models.get_models():
                try:
                    config = QualityConfig.from_settings(model.settings)
                except (TypeError, ValueError, AttributeError) as e:  # settings made by hand
                    self._report(model.name, f"its monitoring settings: {e}")
                    continue
                if config is not None:
                    targets.append((config, _schedule(model.settings)))
            await asyncio.to_thread(self.export, targets)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval)
        for store in self._stores.values():
            store.close()

    def export(self, targets: list[tuple[QualityConfig, str | None]]) -> None:
        for config, schedule in targets:
            try:
                store = self._store(config)
                if store is None:
                    continue
                export_runs(config, store, schedule)
                if config.task is not None and store.exists() and store.label_count(config.model):
                    evaluator = Evaluator(config, store)
                    evaluator.refresh()
                    export_metrics(config, evaluator.stored())
                if config.reference is not None:
                    if self._payloads is None:
                        from modelyard.quality.drift import PayloadCache

                        self._payloads = PayloadCache()
                    export_drift(config, store, self._payloads)
                self._reported.pop(config.model, None)
            except Exception as e:  # one model's store never stops the others' gauges
                self._report(config.model, f"{type(e).__name__}: {e}")

    def _report(self, model: str, message: str) -> None:
        """Log why a model's gauges are not refreshed, once until it changes."""
        if self._reported.get(model) != message:
            logger.warning("model '%s': quality metrics not refreshed: %s", model, message)
            self._reported[model] = message

    def _store(self, config: QualityConfig) -> QualityStore | None:
        """The model's store; None while a SQLite store has not been written at all
        (looking must not create an empty database)."""
        where = (config.store, str(config.folder))
        store = self._stores.get(where)
        if store is None:
            store = QualityStore.open(config)
            database = store.store.url.database
            if store.dialect == "sqlite" and database and not Path(database).exists():
                store.close()
                return None
            self._stores[where] = store
        return store


def _schedule(settings: ModelSettings) -> str | None:
    extra: dict[str, Any] = (settings.parameters.extra if settings.parameters else None) or {}
    predictions = extra.get("predictions")
    return predictions.get("schedule") if isinstance(predictions, dict) else None
