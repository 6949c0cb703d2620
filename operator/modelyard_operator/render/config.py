"""The ConfigMap holding the model folder's declaration as the server will read it."""

from __future__ import annotations

from typing import Any

import yaml

from modelyard_operator.render.common import (
    DECLARATION_KEY,
    RenderOptions,
    config_name,
    local_uri,
    metadata,
)
from modelyard_operator.spec import Model


def declaration_for_pod(model: Model) -> dict[str, Any]:
    """The declaration with the pod's view: its V2 name, the artifact where the storage
    initializer puts it, and no `deployment` (the cluster's business, not the server's)."""
    declaration = {k: v for k, v in model.declaration.items() if k != "deployment"}
    declaration["name"] = model.model_name
    uri = model.spec.model.uri
    if uri:
        declaration["model"] = {**declaration["model"], "uri": local_uri(uri)}
    return declaration


def render_configmap(model: Model, options: RenderOptions) -> dict[str, Any]:
    text = yaml.safe_dump(declaration_for_pod(model), sort_keys=False, allow_unicode=True)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(model, config_name(model), "server"),
        "data": {DECLARATION_KEY: text},
    }
