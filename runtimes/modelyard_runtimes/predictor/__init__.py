"""The predictor runtime: ``implementation: modelyard_runtimes.predictor.PredictorRuntime``."""

from modelyard_runtimes.predictor.pipeline import PredictorOptions, PredictorPipeline
from modelyard_runtimes.predictor.runtime import PredictorRuntime

__all__ = ["PredictorOptions", "PredictorPipeline", "PredictorRuntime"]
