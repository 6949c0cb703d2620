"""Models served next to a folder's own, generated from its settings.

A batch-scored model (any runtime, with ``features`` and a ``predictions.store``)
gets ``<name>-lookup``: the lookup runtime over the store its
batch runs write, answering by entity id with the latest complete run's predictions.
Nothing to declare: whatever ``modelyard batch run`` writes, the lookup model reads.

A model with a store (``predictions.store`` or a ``monitoring`` block) gets
``<name>-feedback``, taking the labels that judge its predictions. Services already
speak V2 to the model, with the same client; sending the truth back to
``<name>-feedback`` needs nothing else (no second API, no second port, the same gRPC
and REST, the same metrics). See ``modelyard_runtimes.feedback``.
"""

from __future__ import annotations

from typing import Any

from mlserver.settings import ModelSettings

from modelyard.declarations.monitoring import QualityConfig
from modelyard.mlserver_internals import set_settings_source, settings_source

LOOKUP_SUFFIX = "-lookup"
LOOKUP_IMPLEMENTATION = "modelyard_runtimes.lookup.LookupRuntime"
FEEDBACK_SUFFIX = "-feedback"
FEEDBACK_IMPLEMENTATION = "modelyard_runtimes.feedback.FeedbackRuntime"
FEEDBACK_OUTPUTS = ("received", "changed")


def lookup_settings(settings: ModelSettings) -> ModelSettings | None:
    """The ``<name>-lookup`` model of a batch-scored model's settings, else None."""
    extra: dict[str, Any] = (settings.parameters.extra if settings.parameters else None) or {}
    predictions = extra.get("predictions") or {}
    features = extra.get("features") or {}
    if not predictions.get("store") or not predictions.get("columns") or not features.get("key"):
        return None
    key: str = features["key"]
    columns: dict[str, str] = dict(predictions["columns"])
    key_type = columns.get(key, "BYTES")
    tensors = [
        (key, key_type),
        *[(n, t) for n, t in columns.items() if n != key],
        ("predicted_at", "BYTES"),
        ("missing", "BOOL"),
    ]
    return companion(
        settings,
        LOOKUP_SUFFIX,
        LOOKUP_IMPLEMENTATION,
        {"model": settings.name, "key": key, "columns": columns, "store": predictions["store"]},
        inputs=[{"name": key, "datatype": key_type, "shape": [-1]}],
        outputs=[{"name": n, "datatype": t, "shape": [-1]} for n, t in tensors],
    )


def feedback_settings(settings: ModelSettings) -> ModelSettings | None:
    """The ``<name>-feedback`` model of a model with a store, else None."""
    config = QualityConfig.from_settings(settings)
    if config is None:
        return None
    return companion(
        settings,
        FEEDBACK_SUFFIX,
        FEEDBACK_IMPLEMENTATION,
        {"model": config.model, "store": config.store, "key": config.key, "task": config.task},
        outputs=[{"name": n, "datatype": "INT64", "shape": [1]} for n in FEEDBACK_OUTPUTS],
    )


def companion(
    settings: ModelSettings,
    suffix: str,
    implementation: str,
    extra: dict[str, Any],
    inputs: list[dict[str, Any]] | None = None,
    outputs: list[dict[str, Any]] | None = None,
) -> ModelSettings:
    """The settings of a model served next to ``settings``' own, named after it."""
    model = ModelSettings.model_validate(
        {
            "name": settings.name + suffix,
            "implementation": implementation,
            "parameters": {"version": settings.version, "extra": extra},
            "inputs": inputs or [],
            "outputs": outputs or [],
        }
    )
    # Relative paths (a SQLite store) are the served model's folder's.
    set_settings_source(model, settings_source(settings))
    return model


def companions(settings: ModelSettings) -> list[ModelSettings]:
    """Every model to serve next to ``settings``' own."""
    return [c for c in (lookup_settings(settings), feedback_settings(settings)) if c is not None]
