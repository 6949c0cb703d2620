"""A rollout's candidate: the Model's new version as its own Deployment, ConfigMap,
Service and NetworkPolicy, named `<name>-candidate`, beside the serving (incumbent) ones.

The candidate is the Model rendered under another resource name by the same renderers:
its pods carry `modelyard.io/model: <name>-candidate`, so the Model's Service never
selects them, and they serve the same V2 name as the incumbent. It runs
`deployment.replicas.min` pods (at least one) with no autoscaler of its own.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from modelyard_operator.render.common import HTTP_PORT, RenderOptions, selector_labels
from modelyard_operator.render.config import render_configmap
from modelyard_operator.render.deployment import render_deployment
from modelyard_operator.render.network import render_network_policy
from modelyard_operator.render.service import render_service
from modelyard_operator.spec import CANDIDATE_SUFFIX, Model


def candidate_name(model: Model) -> str:
    return f"{model.name}{CANDIDATE_SUFFIX}"


def candidate_model(model: Model) -> Model:
    """The Model as its candidate is rendered: another resource name, the same V2 name,
    fixed replicas, and no `rollout` (its pods serve the one version they hold)."""
    deployment = model.spec.deployment
    replicas = deployment.replicas.model_copy(
        update={"min": max(deployment.replicas.min, 1), "max": None}
    )
    spec = model.spec.model_copy(
        update={
            "name": model.model_name,
            "deployment": deployment.model_copy(update={"replicas": replicas, "autoscaling": None}),
        }
    )
    declaration = {k: v for k, v in model.declaration.items() if k != "rollout"}
    declaration["name"] = model.model_name
    return dataclasses.replace(
        model, name=candidate_name(model), spec=spec, declaration=declaration
    )


def render_candidate(model: Model, options: RenderOptions) -> dict[str, dict[str, Any] | None]:
    """The candidate's manifests by kind, in apply order (None: not rendered)."""
    candidate = candidate_model(model)
    policy = render_network_policy(candidate, options)
    if policy is not None:
        # The incumbent's pods send the candidate its share (shadow, canary) over REST,
        # whichever clients the Model's policy lets in.
        policy["spec"]["ingress"].insert(
            0,
            {
                "from": [{"podSelector": {"matchLabels": selector_labels(model, "server")}}],
                "ports": [{"port": HTTP_PORT, "protocol": "TCP"}],
            },
        )
    return {
        "ConfigMap": render_configmap(candidate, options),
        "Deployment": render_deployment(candidate, options),
        "Service": render_service(candidate, options),
        "NetworkPolicy": policy,
    }
