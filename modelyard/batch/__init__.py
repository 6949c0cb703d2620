"""Batch predictions: a model's features streamed through its predictor into the
prediction store (``modelyard.store``), by run, shard and schedule."""

# Rows fetched, scored and written at a time: 20,000 was the fastest on the
# customer-profile benchmark (10,000 and 32,768 lost 10-30%).
DEFAULT_CHUNK_ROWS = 20_000
