"""Prometheus metrics of the platform, served next to MLServer's own on the metrics port."""

from prometheus_client import Counter, Gauge, Histogram

REGISTRY_RELOADS = Counter(
    "modelyard_registry_loads", "Model versions loaded or swapped in by the registry", ["model"]
)
REGISTRY_FAILURES = Counter(
    "modelyard_registry_failures", "Model folders that failed to load", ["model"]
)

# Requests answered by the direct REST inference route, which bypasses MLServer's
# per-path HTTP middleware; gRPC requests are counted by MLServer's interceptor.
REST_REQUESTS = Counter(
    "modelyard_rest_infer_requests", "V2 REST inference requests", ["model", "code"]
)
REST_DURATION = Histogram(
    "modelyard_rest_infer_seconds",
    "V2 REST inference latency, from the request's arrival to its answer",
    ["model"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

# What a HorizontalPodAutoscaler scales on for models whose cost is not CPU; summed
# over the live processes of a multi-process server.
IN_FLIGHT = Gauge(
    "modelyard_requests_in_flight",
    "V2 inference requests being answered, REST and gRPC",
    ["model"],
    multiprocess_mode="livesum",
)
