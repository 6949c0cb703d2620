"""modelyard's MLServer runtimes (low-code): each is an ``mlserver.MLModel`` named in
model settings by its import path, e.g. ``modelyard_runtimes.predictor.PredictorRuntime``."""
