"""The NetworkPolicy of a Model's serving pods: REST and gRPC from the peers allowed
(labelled namespaces and pods), metrics from the monitoring namespace, nothing else.

The kubelet's probes come from the node, which NetworkPolicies do not filter.
"""

from __future__ import annotations

import json
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

# The label Kubernetes (1.21+) sets on every namespace, with its name.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def _ports(*ports: int) -> list[dict[str, Any]]:
    return [{"port": port, "protocol": "TCP"} for port in ports]


def render_network_policy(model: Model, options: RenderOptions) -> dict[str, Any] | None:
    wanted = model.spec.network_policy
    enabled = options.network_policy if wanted.enabled is None else wanted.enabled
    if not enabled:
        return None
    peers = (
        [dict(p) for p in wanted.from_]
        if wanted.from_ is not None
        else json.loads(options.network_policy_from)
    )
    monitoring = wanted.monitoring_namespace or options.monitoring_namespace
    ingress = [
        {"from": [{"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: monitoring}}}],
         "ports": _ports(METRICS_PORT)},
    ]  # fmt: skip
    if peers:  # an empty list: no client at all, metrics only
        ingress.insert(0, {"from": peers, "ports": _ports(HTTP_PORT, GRPC_PORT)})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(model, model.name, "server"),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(model, "server")},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }
