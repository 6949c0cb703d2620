"""The Prometheus Operator ServiceMonitor, where the cluster has that CRD."""

from __future__ import annotations

from typing import Any

from modelyard_operator.render.common import RenderOptions, metadata, selector_labels
from modelyard_operator.spec import Model


def render_service_monitor(model: Model, options: RenderOptions) -> dict[str, Any] | None:
    if not options.api.service_monitor:
        return None
    endpoint: dict[str, Any] = {"port": "metrics", "path": "/metrics", "interval": "30s"}
    if model.spec.tls is not None:
        # The certificate is checked against the tls Secret's ca.crt (cert-manager writes
        # one) for the Service's name.
        endpoint["scheme"] = "https"
        endpoint["tlsConfig"] = {
            "serverName": f"{model.name}.{model.namespace}.svc",
            "ca": {"secret": {"name": model.spec.tls.secret, "key": "ca.crt"}},
        }
    tokens = model.spec.auth.inference_token_secret
    if tokens is not None:  # the metrics port takes the inference tokens
        endpoint["bearerTokenSecret"] = {"name": tokens.secret, "key": tokens.key}
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": metadata(model, model.name, "server"),
        "spec": {
            "selector": {"matchLabels": selector_labels(model, "server")},
            "endpoints": [endpoint],
        },
    }
