"""Pure renderers: a `Model` (and options) in, Kubernetes manifests out.

`render_all` is what the operator applies and what `modelyard render` prints. A kind
that renders to None is absent for this model (no autoscaling, no schedule, ...) and
the operator deletes any it made before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from modelyard_operator.render.autoscaling import render_hpa, render_pdb
from modelyard_operator.render.batch import render_cronjob
from modelyard_operator.render.common import ApiVersions, RenderOptions
from modelyard_operator.render.config import render_configmap
from modelyard_operator.render.deployment import render_deployment
from modelyard_operator.render.monitoring import render_service_monitor
from modelyard_operator.render.network import render_network_policy
from modelyard_operator.render.service import render_service
from modelyard_operator.spec import Model

Renderer = Callable[[Model, RenderOptions], dict[str, Any] | None]

# In apply order: configuration before the pods that mount it.
RENDERERS: dict[str, Renderer] = {
    "ConfigMap": render_configmap,
    "Deployment": render_deployment,
    "Service": render_service,
    "HorizontalPodAutoscaler": render_hpa,
    "PodDisruptionBudget": render_pdb,
    "CronJob": render_cronjob,
    "ServiceMonitor": render_service_monitor,
    "NetworkPolicy": render_network_policy,
}


def render_all(model: Model, options: RenderOptions) -> dict[str, dict[str, Any] | None]:
    """Every kind the operator manages, mapped to its manifest or None when absent."""
    return {kind: render(model, options) for kind, render in RENDERERS.items()}


def manifests(model: Model, options: RenderOptions) -> list[dict[str, Any]]:
    return [m for m in render_all(model, options).values() if m is not None]


__all__ = ["RENDERERS", "ApiVersions", "RenderOptions", "manifests", "render_all"]
