"""Batch predictions: a model's features streamed through its predictor into the
prediction store (``modelyard.store``), by run, shard and schedule."""
