"""Prometheus metrics of the platform, served next to MLServer's own on the metrics port."""

from prometheus_client import Counter

REGISTRY_RELOADS = Counter(
    "modelyard_registry_loads", "Model versions loaded or swapped in by the registry", ["model"]
)
REGISTRY_FAILURES = Counter(
    "modelyard_registry_failures", "Model folders that failed to load", ["model"]
)
