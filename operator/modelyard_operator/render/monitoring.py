"""The Prometheus Operator ServiceMonitor, where the cluster has that CRD."""

from __future__ import annotations

from typing import Any

from modelyard_operator.render.common import RenderOptions, metadata, selector_labels
from modelyard_operator.spec import Model


def render_service_monitor(model: Model, options: RenderOptions) -> dict[str, Any] | None:
    if not options.api.service_monitor:
        return None
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": metadata(model, model.name, "server"),
        "spec": {
            "selector": {"matchLabels": selector_labels(model, "server")},
            "endpoints": [{"port": "metrics", "path": "/metrics", "interval": "30s"}],
        },
    }
