"""``<name>-feedback``: the V2 model served next to every model with a store, taking
the labels that judge its predictions.

Services already speak V2 to the model, with the same client; sending the truth back
to ``<name>-feedback`` needs nothing else (no second API, no second port, the same
gRPC and REST, the same metrics). See ``modelyard_runtimes.feedback``.
"""

from __future__ import annotations

from mlserver.settings import ModelSettings

from modelyard.companions import companion
from modelyard.quality.config import QualityConfig

FEEDBACK_SUFFIX = "-feedback"
FEEDBACK_IMPLEMENTATION = "modelyard_runtimes.feedback.FeedbackRuntime"
FEEDBACK_OUTPUTS = ("received", "changed")


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
