"""Model quality from ground truth.

- Labels come in from a file (``modelyard feedback load``) or over V2 (the
  ``<name>-feedback`` model served next to the model), keyed by entity id or by the
  ``id`` of an online request (``modelyard.quality.labels``).
- A declared share of online requests and responses is logged to the store off the
  request path (``modelyard.quality.payloads``).
- Labels are joined with the predictions they judge, batch runs and logged online
  requests, and scored per model version and per day and week
  (``modelyard.quality.evaluate``), then shown by ``modelyard metrics`` and exported to
  Prometheus by the server (``modelyard.quality.exporter``).

Everything lives in the model's prediction store, next to its batch runs.
"""
