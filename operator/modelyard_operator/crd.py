"""The `Model` CustomResourceDefinition, generated from the declaration's JSON Schema.

One schema is the source of truth: the CRD's openAPIV3Schema is the declaration schema
converted to a structural schema, plus the cluster-only keys. `make generate` writes it,
and the Helm chart's copy of it; a test fails when a committed file and the schema drift.

    python -m modelyard_operator.crd [--check]
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from modelyard.declarations.schema import declaration_schema

GROUP = "modelyard.io"
VERSION = "v1alpha1"
KIND = "Model"
# (apiVersion, kind): how the cluster client names the Model resource.
MODEL = (f"{GROUP}/{VERSION}", KIND)
PLURAL = "models"
CRD_NAME = f"{PLURAL}.{GROUP}"
CRD_FILE = Path(__file__).parent / "crds" / f"{CRD_NAME}.yaml"
# The chart's template of the same CRD (absent from an installed package).
CHART_CRD_FILE = (
    Path(__file__).resolve().parents[2] / "charts" / "modelyard" / "templates" / "crds"
    / f"{CRD_NAME}.yaml"
)  # fmt: skip
HEADER = (
    "# Generated from modelyard/declarations/schema/declaration.schema.json by `make generate`.\n"
)
# Helm never upgrades files in a chart's crds/ folder, so the chart templates the CRD,
# and keeps it on uninstall: deleting a CRD deletes every Model, and so every model.
KEEP = {"helm.sh/resource-policy": "keep"}

# OpenAPI v3.0 keywords a structural schema may carry, as they are in JSON Schema.
KEPT = {
    "type", "description", "properties", "required", "items", "enum", "pattern",
    "minLength", "maxLength", "minimum", "maximum", "minItems", "maxItems", "uniqueItems",
    "minProperties", "maxProperties", "default", "format", "additionalProperties",
    # Junctors: allowed when they only validate values of fields declared outside them.
    "allOf", "anyOf", "oneOf", "not",
}  # fmt: skip
DROPPED = {"$schema", "$id", "$defs", "$comment", "title", "examples"}

CLUSTER_PROPERTIES: dict[str, Any] = {
    "environment": {
        "description": "Which deployment.environments overlay applies on this cluster "
        "(e.g. staging); none: the base deployment block.",
        "type": "string",
        "minLength": 1,
    },
    "folder": {
        "description": "Where the model folder was uploaded (s3://bucket/gender/, gs://..., "
        "azure, or an http(s) URL of a .tar.gz or .zip of it). It is fetched into the pod's "
        "model folder at start, so model.uri, predictor files and features files may be "
        "paths inside it, as on a laptop.",
        "type": "string",
        "minLength": 1,
    },
    "image": {
        "description": "The serving image; default: the operator's MODELYARD_OPERATOR_IMAGE.",
        "type": "string",
        "minLength": 1,
    },
    "buildEnvironment": {
        "description": "Build the model folder's requirements environment (requirements.txt "
        "or python.requirements) in an init container before the server starts, from the "
        "operator's package index (the chart's models.environmentIndexUrl), as another user "
        "than the server's and with the model folder read-only. Off by default: the "
        "production path is an image with the environment baked in (modelyard image, "
        "spec.image), needing no index in the cluster.",
        "type": "boolean",
    },
    "secretEnv": {
        "description": "Environment variables taken from Secrets, for the ${VAR} references "
        "of the declaration (database URLs, storage credentials). Never put secrets in spec.",
        "type": "object",
        "additionalProperties": {
            "type": "object",
            "required": ["secret", "key"],
            "properties": {
                "secret": {"description": "The Secret's name.", "type": "string", "minLength": 1},
                "key": {"description": "The key in the Secret.", "type": "string", "minLength": 1},
            },
        },
    },
}

_LABEL_SELECTOR: dict[str, Any] = {
    "type": "object",
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {
                        "type": "string",
                        "enum": ["In", "NotIn", "Exists", "DoesNotExist"],
                    },
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
CLUSTER_PROPERTIES["adminTokenSecret"] = {
    "description": "The Secret key holding the admin token of the repository API (load, "
    "unload), mounted as a file for --admin-token-file; none: the repository API is "
    "refused.",
    "type": "object",
    "required": ["secret", "key"],
    "properties": {
        "secret": {"description": "The Secret's name.", "type": "string", "minLength": 1},
        "key": {"description": "The key in the Secret.", "type": "string", "minLength": 1},
    },
}
_SECRET_KEY = {
    "type": "object",
    "required": ["secret", "key"],
    "properties": {
        "secret": {"description": "The Secret's name.", "type": "string", "minLength": 1},
        "key": {"description": "The key in the Secret.", "type": "string", "minLength": 1},
    },
}
CLUSTER_PROPERTIES["auth"] = {
    "description": "Who may call inference (REST, gRPC and the metrics port; health probes "
    "stay open). With both keys, a call needs both a token and a certificate.",
    "type": "object",
    "properties": {
        "inferenceTokenSecret": {
            **_SECRET_KEY,
            "description": "The Secret key holding the allowed tokens, one a line, mounted "
            "for --inference-token-file: calls need 'Authorization: Bearer <token>'.",
        },
        "clientCASecret": {
            **_SECRET_KEY,
            "description": "The Secret key holding a PEM CA, mounted for --tls-client-ca: "
            "calls need a client certificate it signed (mutual TLS; needs tls).",
        },
    },
}
CLUSTER_PROPERTIES["tls"] = {
    "description": "REST, gRPC and metrics over TLS, from a kubernetes.io/tls Secret "
    "(tls.crt and tls.key, mounted for --tls-cert and --tls-key); the probes use HTTPS.",
    "type": "object",
    "required": ["secret"],
    "properties": {
        "secret": {"description": "The Secret's name.", "type": "string", "minLength": 1},
    },
}
CLUSTER_PROPERTIES["networkPolicy"] = {
    "description": "The Model's NetworkPolicy; unset fields take the operator's defaults "
    "(the chart's models.networkPolicy).",
    "type": "object",
    "properties": {
        "enabled": {"description": "Render a NetworkPolicy for the Model.", "type": "boolean"},
        "from": {
            "description": "Who may reach the REST and gRPC ports: NetworkPolicy peers "
            "(namespaceSelector and/or podSelector).",
            "type": "array",
            "items": {
                "type": "object",
                "minProperties": 1,
                "properties": {
                    "namespaceSelector": copy.deepcopy(_LABEL_SELECTOR),
                    "podSelector": copy.deepcopy(_LABEL_SELECTOR),
                },
            },
        },
        "monitoringNamespace": {
            "description": "The namespace whose pods may scrape the metrics port.",
            "type": "string",
            "minLength": 1,
        },
    },
}
CLUSTER_PROPERTIES["mlflow"] = {
    "description": "The MLflow tracking server a registry model.uri (models:/churn@champion, "
    "models:/churn/Production, runs:/<run id>/model) is resolved against. The operator "
    "pins the version it names in status.registry and gives the pods models:/<name>/<N>, "
    "and resolves moving URIs (aliases, stages, latest) again every pollSeconds.",
    "type": "object",
    "properties": {
        "trackingUri": {
            "description": "The tracking server; none: the operator's MLFLOW_TRACKING_URI "
            "(the chart's mlflow.trackingUri).",
            "type": "string",
            "minLength": 1,
        },
        "credentialsSecret": {
            "description": "A Secret whose key 'credentials' is an MLflow credentials file "
            "([mlflow] with mlflow_tracking_username and mlflow_tracking_password), mounted "
            "as the pods' ~/.mlflow/credentials (the operator's is the chart's "
            "mlflow.credentialsSecret).",
            "type": "string",
            "minLength": 1,
        },
        "pollSeconds": {
            "description": "Seconds between resolutions of a moving URI; none: the "
            "operator's (the chart's mlflow.pollSeconds, 60).",
            "type": "integer",
            "minimum": 1,
        },
    },
}

# Kubernetes only: what the operator does with a running candidate, once.
ROLLOUT_ACTION: dict[str, Any] = {
    "description": "Kubernetes only: promote (the candidate's version serves from the "
    "Model's Deployment, the candidate is deleted) or abort (the candidate is deleted, the "
    "incumbent serves on until the version changes again). The operator acts once and "
    "removes the key. See docs/kubernetes.md#rollouts.",
    "type": "string",
    "enum": ["promote", "abort"],
}

STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    # kopf keeps its own progress in status too.
    "x-kubernetes-preserve-unknown-fields": True,
    "properties": {
        "phase": {"type": "string", "enum": ["Pending", "Ready", "Failed"]},
        "observedGeneration": {"type": "integer"},
        "readyReplicas": {"type": "integer"},
        "children": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "name": {"type": "string"},
                },
            },
        },
        "registry": {
            "description": "The version a registry model.uri is pinned to, and the last "
            "resolution's error (the pin is kept).",
            "type": "object",
            "properties": {
                "uri": {"type": "string"},
                "trackingUri": {"type": "string"},
                "pinned": {"type": "string"},
                "version": {"type": "string"},
                "runId": {"type": "string"},
                "source": {"type": "string"},
                "resolvedAt": {"type": "string", "format": "date-time"},
                "error": {"type": "string"},
            },
        },
        "conditions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["type", "status"],
                "properties": {
                    "type": {"type": "string"},
                    "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                    "reason": {"type": "string"},
                    "message": {"type": "string"},
                    "observedGeneration": {"type": "integer"},
                    "lastTransitionTime": {"type": "string", "format": "date-time"},
                },
            },
        },
    },
}

PRINTER_COLUMNS = [
    {"name": "Runtime", "type": "string", "jsonPath": ".spec.runtime"},
    {"name": "Version", "type": "string", "jsonPath": ".spec.version"},
    {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    # A registry model.uri's pinned version (kubectl get models -o wide).
    {"name": "Pinned", "type": "string", "jsonPath": ".status.registry.pinned", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


class SchemaConversionError(ValueError):
    pass


def structural(schema: Mapping[str, Any], defs: Mapping[str, Any], where: str = "#") -> Any:
    """A JSON Schema (2020-12) node as a Kubernetes structural schema node."""
    node = dict(schema)
    if "$ref" in node:
        ref = node.pop("$ref")
        prefix = "#/$defs/"
        if not ref.startswith(prefix) or ref[len(prefix) :] not in defs:
            raise SchemaConversionError(f"{where}: unsupported $ref {ref!r}")
        # Keywords beside $ref (a more specific description) win over the definition's.
        node = {**defs[ref[len(prefix) :]], **node}
        return structural(node, defs, where)
    branches = node.get("oneOf") or node.get("anyOf") or []
    if "type" not in node and len({b.get("type") for b in branches}) > 1:
        # A value of one type or another (a column or a list of columns): a structural
        # schema types every node, so the API server keeps it as written and the
        # operator's spec checks it.
        kept = {k: node[k] for k in ("description",) if k in node}
        return {**kept, "x-kubernetes-preserve-unknown-fields": True}
    unknown = set(node) - KEPT - DROPPED
    if unknown:
        raise SchemaConversionError(
            f"{where}: keywords {sorted(unknown)} have no structural-schema equivalent; "
            "express the rule with the supported ones or check it in the operator"
        )
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in DROPPED:
            continue
        if key == "properties":
            out[key] = {
                name: structural(sub, defs, f"{where}/properties/{name}")
                for name, sub in value.items()
            }
        elif key == "items" or key == "not":
            out[key] = structural(value, defs, f"{where}/{key}")
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [structural(s, defs, f"{where}/{key}/{i}") for i, s in enumerate(value)]
        elif key == "additionalProperties":
            # Unknown fields are pruned by the API server; `false` is not expressible.
            if isinstance(value, Mapping):
                out[key] = structural(value, defs, f"{where}/{key}")
        else:
            out[key] = copy.deepcopy(value)
    is_object = out.get("type") == "object"
    if is_object and "properties" not in out and "additionalProperties" not in out:
        # A free-form object (runtime parameters): kept as written.
        out["x-kubernetes-preserve-unknown-fields"] = True
    if out.get("type") == "array" and "items" not in out:
        # Any values (tensor data, flat or nested): a structural array names its items.
        out["items"] = {"x-kubernetes-preserve-unknown-fields": True}
    return out


def spec_schema(declaration: Mapping[str, Any]) -> dict[str, Any]:
    spec = structural(declaration, declaration.get("$defs", {}))
    spec["description"] = (
        "A model declaration (model.yaml) and how to run it on this cluster. "
        "`name` defaults to the resource's name."
    )
    spec["properties"] = {**spec["properties"], **CLUSTER_PROPERTIES}
    rollout = spec["properties"].get("rollout")
    if rollout is not None:
        rollout["properties"] = {**rollout.get("properties", {}), "action": ROLLOUT_ACTION}
    # The resource's name stands in for the declaration's.
    spec["required"] = [r for r in spec.get("required", []) if r != "name"]
    return spec


def crd(declaration: Mapping[str, Any] | None = None) -> dict[str, Any]:
    spec = spec_schema(declaration if declaration is not None else declaration_schema())
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "categories": ["modelyard"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "required": ["spec"],
                            "properties": {"spec": spec, "status": STATUS_SCHEMA},
                        }
                    },
                }
            ],
        },
    }


def render() -> str:
    return HEADER + yaml.safe_dump(crd(), sort_keys=False, width=100)


def chart_crd() -> dict[str, Any]:
    """The CRD as the chart installs it: the operator's, plus Helm's keep policy."""
    definition = crd()
    definition["metadata"] = {**definition["metadata"], "annotations": KEEP}
    return definition


def render_chart_template() -> str:
    body = yaml.safe_dump(chart_crd(), sort_keys=False, width=100)
    if "{{" in body or "}}" in body:
        raise SchemaConversionError("a description holds '{{' or '}}', which Helm would parse")
    return HEADER + "{{- if .Values.crds.create }}\n" + body + "{{- end }}\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    files = {CRD_FILE: render(), CHART_CRD_FILE: render_chart_template()}
    if "--check" in args:
        stale = [
            path for path, text in files.items() if not path.exists() or path.read_text() != text
        ]
        for path in stale:
            print(f"{path} is stale: run `make generate`", file=sys.stderr)
        return 1 if stale else 0
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
