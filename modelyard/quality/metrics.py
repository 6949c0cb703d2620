"""Prometheus metrics of the payload log, the quality metrics and the batch runs.

Served with the serving metrics on the metrics port: the payload log counts from every
server process, the gauges from the one that serves the scrape.
"""

from prometheus_client import Counter, Gauge

# Sampled payload logging (modelyard.quality.payloads): requests sampled, rows written,
# and entries dropped because the queue was full or the store refused them (sampled
# minus written minus dropped is what the writer has yet to write).
PAYLOADS_SAMPLED = Counter(
    "modelyard_payload_log_sampled", "Requests sampled for the payload log", ["model"]
)
PAYLOADS_LOGGED = Counter(
    "modelyard_payload_log_written", "Sampled requests written to the store", ["model"]
)
PAYLOAD_DROPS = Counter(
    "modelyard_payload_log_dropped",
    "Sampled requests not logged: queue_full (the writer is behind) or error (the store)",
    ["model", "reason"],
)

# Set from the prediction store by the server that serves the metrics endpoint
# (modelyard.quality.exporter): the latest window's quality of each model version, and
# its batch runs. "mostrecent": one process writes them, whichever serves the scrape.
MODEL_METRIC = Gauge(
    "modelyard_model_metric",
    "Quality against ground truth in the latest window (class: '' for the model as a whole)",
    ["model", "version", "metric", "window", "class"],
    multiprocess_mode="mostrecent",
)
MODEL_METRIC_SAMPLES = Gauge(
    "modelyard_model_metric_samples",
    "Labelled predictions the latest window's metrics are computed over",
    ["model", "version", "window"],
    multiprocess_mode="mostrecent",
)
MODEL_METRIC_WINDOW = Gauge(
    "modelyard_model_metric_window_start_timestamp_seconds",
    "Start of the latest window with labels (UTC)",
    ["model", "version", "window"],
    multiprocess_mode="mostrecent",
)
BATCH_RUNS = Gauge(
    "modelyard_batch_runs",
    "Batch runs recorded in the store, by status (running, complete, failed)",
    ["model", "version", "status"],
    multiprocess_mode="mostrecent",
)
BATCH_LAST_SUCCESS = Gauge(
    "modelyard_batch_last_success_timestamp_seconds",
    "When the latest complete batch run finished",
    ["model", "version"],
    multiprocess_mode="mostrecent",
)
BATCH_LAST_ROWS = Gauge(
    "modelyard_batch_last_run_rows",
    "Rows written by the latest complete batch run",
    ["model", "version"],
    multiprocess_mode="mostrecent",
)
BATCH_LAST_DURATION = Gauge(
    "modelyard_batch_last_run_duration_seconds",
    "How long the latest complete batch run took, start to finish",
    ["model", "version"],
    multiprocess_mode="mostrecent",
)
BATCH_LAST_FAILED = Gauge(
    "modelyard_batch_last_run_failed",
    "1 when the most recently started batch run failed, else 0",
    ["model", "version"],
    multiprocess_mode="mostrecent",
)
BATCH_LAST_DUE = Gauge(
    "modelyard_batch_last_due_timestamp_seconds",
    "When predictions.schedule last fired (the run due most recently)",
    ["model"],
    multiprocess_mode="mostrecent",
)
# Drift of each declared feature (and prediction output) from the model's reference
# sample (modelyard.quality.drift): per statistic and window (day, week, last:N of the
# payload log; run, run:previous of the latest batch run).
DRIFT = Gauge(
    "modelyard_drift",
    "Drift from the reference sample, per feature, statistic (psi, ks, ks_pvalue, chi2, "
    "chi2_pvalue, missing, samples) and window",
    ["model", "version", "feature", "statistic", "window"],
    multiprocess_mode="mostrecent",
)
