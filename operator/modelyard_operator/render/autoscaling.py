"""HorizontalPodAutoscaler and PodDisruptionBudget of the serving Deployment."""

from __future__ import annotations

from typing import Any

from modelyard_operator.render.common import RenderOptions, metadata, selector_labels
from modelyard_operator.spec import Model


def render_hpa(model: Model, options: RenderOptions) -> dict[str, Any] | None:
    """None when the model does not autoscale (the operator then removes any HPA)."""
    deployment = model.spec.deployment
    scaling = deployment.autoscaling
    if scaling is None:
        return None
    metric: dict[str, Any]
    if scaling.metric == "requests-in-flight":
        # The gauge is labelled by V2 model name; the selector keeps to this model's.
        selector = {"matchLabels": {"model": model.model_name}}
        metric = {
            "type": "Pods",
            "pods": {
                "metric": {"name": options.inflight_metric, "selector": selector},
                "target": {"type": "AverageValue", "averageValue": str(scaling.target)},
            },
        }
    else:
        metric = {
            "type": "Resource",
            "resource": {
                "name": scaling.metric,
                "target": {"type": "Utilization", "averageUtilization": scaling.target},
            },
        }
    # autoscaling/v2 and v2beta2 have the same shape.
    return {
        "apiVersion": options.api.hpa,
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(model, model.name, "server"),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": model.name},
            "minReplicas": deployment.replicas.min,
            "maxReplicas": deployment.replicas.max,
            "metrics": [metric],
        },
    }


def render_pdb(model: Model, options: RenderOptions) -> dict[str, Any] | None:
    """A budget only where there is redundancy: with one pod it would block every drain."""
    if model.spec.deployment.replicas.min < 2:
        return None
    return {
        "apiVersion": options.api.pdb,
        "kind": "PodDisruptionBudget",
        "metadata": metadata(model, model.name, "server"),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(model, "server")},
        },
    }
