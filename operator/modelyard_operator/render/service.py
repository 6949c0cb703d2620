"""The Service in front of the serving pods: V2 REST, V2 gRPC and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from modelyard_operator.render.common import (
    GRPC_PORT,
    HTTP_PORT,
    METRICS_PORT,
    RenderOptions,
    metadata,
    selector_labels,
)
from modelyard_operator.spec import Model

PORTS = (("http", HTTP_PORT), ("grpc", GRPC_PORT), ("metrics", METRICS_PORT))


def render_service(model: Model, options: RenderOptions) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(model, model.name, "server"),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(model, "server"),
            "ports": [
                {"name": name, "port": port, "targetPort": name, "protocol": "TCP"}
                for name, port in PORTS
            ],
        },
    }
