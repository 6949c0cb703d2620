"""The feedback runtime: ``implementation: modelyard_runtimes.feedback.FeedbackRuntime``."""

from modelyard_runtimes.feedback.runtime import FeedbackOptions, FeedbackRuntime

__all__ = ["FeedbackOptions", "FeedbackRuntime"]
