"""A declaration's ``monitoring`` block: what ``modelyard validate`` checks in it, and
what a model's settings say about its quality (where its store is, how much online
traffic to log, how its predictions compare with labels).

The block reaches the server in ``parameters.extra.modelyard.monitoring`` (see
``modelyard.declarations.settings``); its store is ``predictions.store``, or
``DEFAULT_STORE`` for a model that only serves online.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelyard.declarations.integrity import EXTRA_KEY
from modelyard.errors import QualityError
from modelyard.mlserver_internals import settings_folder

if TYPE_CHECKING:  # `modelyard validate` runs without importing MLServer
    from mlserver.settings import ModelSettings

DEFAULT_STORE = "${PREDICTIONS_DB_URL:-sqlite:///predictions.db}"
CLASSIFICATION, REGRESSION = "classification", "regression"


@dataclass(frozen=True)
class QualityConfig:
    model: str
    version: str
    folder: Path
    store: str  # a SQLAlchemy URL, ${VAR} placeholders kept
    key: str | None = None  # the entity id of batch predictions (features.key)
    sample_rate: float = 0.0
    task: str | None = None
    prediction: str | None = None
    scores: dict[str, str] = field(default_factory=dict)  # class label -> column
    reference: str | None = None  # the reference sample for drift, in the model folder

    @classmethod
    def from_settings(cls, settings: ModelSettings) -> QualityConfig | None:
        """The quality settings of a model, or None when it has no store (neither
        ``predictions.store`` nor a ``monitoring`` block)."""
        extra: dict[str, Any] = (settings.parameters.extra if settings.parameters else None) or {}
        carried = extra.get(EXTRA_KEY)
        monitoring: dict[str, Any] = (
            (carried.get("monitoring") or {}) if isinstance(carried, dict) else {}
        )
        predictions = extra.get("predictions") or {}
        features = extra.get("features") or {}
        store = predictions.get("store") if isinstance(predictions, dict) else None
        if not store and not monitoring:
            return None
        folder = settings_folder(settings)
        if folder is None:
            return None  # settings made in memory: no folder to anchor a SQLite store on
        key = features.get("key") if isinstance(features, dict) else None
        return cls(
            model=settings.name,
            version=settings.version or "",
            folder=folder,
            store=store or DEFAULT_STORE,
            key=key,
            sample_rate=float(monitoring.get("payload_sample_rate", 0.0)),
            task=monitoring.get("task"),
            prediction=monitoring.get("prediction"),
            scores=dict(monitoring.get("scores") or {}),
            reference=monitoring.get("reference"),
        )

    @property
    def columns(self) -> list[str]:
        """The prediction columns (and outputs) the metrics read."""
        named = [self.prediction] if self.prediction else []
        return list(dict.fromkeys([*named, *self.scores.values()]))

    def require_task(self) -> str:
        """The task, once the declaration says enough to compute metrics."""
        if self.task is None:
            raise QualityError(
                f"model '{self.model}' declares no monitoring.task; add e.g. monitoring: "
                "{task: classification, scores: {yes: p_yes, no: p_no}} or "
                "{task: regression, prediction: value} to its model.yaml"
            )
        problems = [m for _, m in _task_problems(self.task, self.prediction, self.scores)]
        if problems:
            raise QualityError(f"model '{self.model}': " + "; ".join(problems))
        return self.task


def _task_problems(
    task: Any, prediction: Any, scores: Any, columns: set[str] | None = None
) -> Iterator[tuple[str, str]]:
    if task is None:
        if prediction is not None or scores:
            yield (
                "/monitoring/task",
                "prediction and scores need a task: classification or regression",
            )
        return
    if task == REGRESSION and scores:
        yield "/monitoring/scores", "a regression has no class scores; remove scores"
    if task == REGRESSION and prediction is None:
        yield (
            "/monitoring/prediction",
            "a regression's metrics compare prediction with the labels; name the column "
            "(and output) holding the predicted value",
        )
    if task == CLASSIFICATION and prediction is None and not scores:
        yield (
            "/monitoring/prediction",
            "a classification needs prediction (the column holding the predicted class) "
            "or scores (each class's score column)",
        )
    if columns is None:
        return
    named = [("/monitoring/prediction", prediction)] if isinstance(prediction, str) else []
    if isinstance(scores, dict):
        named += [(f"/monitoring/scores/{c}", n) for c, n in scores.items() if isinstance(n, str)]
    for pointer, name in named:
        if name not in columns:
            yield (
                pointer,
                f"{name!r} is neither a predictions column nor an output; use one of "
                + ", ".join(sorted(columns)),
            )


def monitoring_problems(data: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """What ``modelyard validate`` says about a declaration's ``monitoring`` beyond the
    schema: a task with what it needs, naming columns or outputs that exist."""
    monitoring = data.get("monitoring")
    if not isinstance(monitoring, dict):
        return
    columns: set[str] = set()
    predictions = data.get("predictions")
    if isinstance(predictions, dict) and isinstance(predictions.get("columns"), dict):
        columns |= set(predictions["columns"])
    if isinstance(data.get("outputs"), list):
        columns |= {o["name"] for o in data["outputs"] if isinstance(o, dict) and "name" in o}
    yield from _task_problems(
        monitoring.get("task"),
        monitoring.get("prediction"),
        monitoring.get("scores"),
        columns or None,  # nothing declared: the columns are the model's own affair
    )
