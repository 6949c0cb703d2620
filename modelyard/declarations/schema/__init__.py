"""The JSON Schemas: one for the `model.yaml` declaration, one for plain MLServer
`model-settings.json` files. The declaration schema is the single source of the
validator, the generator, the docs and the Kubernetes CRD."""

from __future__ import annotations

import copy
import functools
import json
from importlib.resources import files
from typing import Any

DECLARATION = "declaration.schema.json"
MODEL_SETTINGS = "model-settings.schema.json"


@functools.cache
def _load(name: str) -> dict[str, Any]:
    return json.loads(files(__package__).joinpath(name).read_text())


def declaration_schema() -> dict[str, Any]:
    """The declaration schema as written (with ``$defs`` and ``$ref``); a fresh copy."""
    return copy.deepcopy(_load(DECLARATION))


def model_settings_schema() -> dict[str, Any]:
    return copy.deepcopy(_load(MODEL_SETTINGS))


def inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with every local ``$ref`` replaced by what it points at and no ``$defs``.

    Kubernetes' structural schemas (a CRD's openAPIV3Schema) have no ``$ref``. Keywords
    beside a ``$ref`` (its description) win over the referenced schema's own.
    """
    defs = schema.get("$defs", {})

    def resolve(node: Any, seen: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [resolve(item, seen) for item in node]
        if not isinstance(node, dict):
            return node
        out: dict[str, Any] = {}
        ref = node.get("$ref")
        if ref is not None:
            prefix = "#/$defs/"
            if not ref.startswith(prefix) or ref[len(prefix) :] not in defs:
                raise ValueError(f"cannot inline {ref!r}: only '#/$defs/<name>' refs are supported")
            name = ref[len(prefix) :]
            if name in seen:
                raise ValueError(f"cannot inline {ref!r}: it refers to itself")
            out.update(resolve(defs[name], (*seen, name)))
        for key, value in node.items():
            if key in ("$ref", "$defs"):
                continue
            out[key] = resolve(value, seen)
        return out

    return resolve(schema, ())


def declaration_schema_inlined() -> dict[str, Any]:
    """The declaration schema with no ``$ref``: for the CRD and the docs."""
    return inlined(_load(DECLARATION))
