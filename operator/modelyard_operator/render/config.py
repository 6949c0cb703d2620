"""The ConfigMap of a model: its declaration as the pod sees it, and the MLServer settings
generated from it (`model-settings.json`, `settings.json`) by the same code as
`modelyard build`. `${VAR}` placeholders stay as written: secrets reach the pod as
environment variables from Secret references, never through this ConfigMap."""

from __future__ import annotations

from typing import Any

import yaml

from modelyard.declarations.load import DECLARATION_FILENAME
from modelyard.declarations.settings import (
    MODEL_SETTINGS_FILENAME,
    SERVER_SETTINGS_FILENAME,
    dumps,
    model_settings,
    server_settings,
)
from modelyard_operator.render.common import RenderOptions, config_name, metadata, pod_uri
from modelyard_operator.spec import Model


def declaration_for_pod(model: Model) -> dict[str, Any]:
    """The declaration with the pod's view: its V2 name, model.uri where the storage
    initializer puts the artifact, and no `deployment` (the cluster's business, not the
    server's)."""
    declaration = {k: v for k, v in model.declaration.items() if k != "deployment"}
    declaration["name"] = model.model_name
    uri = model.spec.model.uri
    if uri:
        declaration["model"] = {**declaration["model"], "uri": pod_uri(uri)}
    return declaration


def config_files(model: Model) -> dict[str, str]:
    declaration = declaration_for_pod(model)
    return {
        DECLARATION_FILENAME: yaml.safe_dump(declaration, sort_keys=False, allow_unicode=True),
        MODEL_SETTINGS_FILENAME: dumps(model_settings(declaration)),
        SERVER_SETTINGS_FILENAME: dumps(server_settings(declaration)),
    }


def render_configmap(model: Model, options: RenderOptions) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(model, config_name(model), "server"),
        "data": config_files(model),
    }
