"""Names, labels and pod parts shared by the renderers. Pure: no kopf, no client."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from modelyard_operator.spec import CRONJOB_SUFFIX, Model

HTTP_PORT, GRPC_PORT, METRICS_PORT = 8080, 8081, 8082
# The pod's view: modelyard serves every folder of MODELS_DIR; this model's folder holds
# model.yaml (from the ConfigMap) and artifacts/ (fetched at start).
MODELS_DIR = "/models"
ARTIFACTS = "artifacts"
DECLARATION_KEY = "model.yaml"
CONFIG_HASH_ANNOTATION = "modelyard.io/config-hash"
MODEL_LABEL = "modelyard.io/model"
RUN_USER = 1000


@dataclass(frozen=True)
class ApiVersions:
    """The API versions to render; the operator picks those the cluster serves."""

    hpa: str = "autoscaling/v2"
    cronjob: str = "batch/v1"
    pdb: str = "policy/v1"
    # Indexed Jobs (sharded batch runs) exist from Kubernetes 1.22.
    indexed_jobs: bool = True
    service_monitor: bool = False


@dataclass(frozen=True)
class RenderOptions:
    image: str = "ghcr.io/modelyard/modelyard:0.1.0"
    # KServe's storage initializer: `<uri> <dest>`, for s3, gs, azure, http(s) and more.
    storage_initializer_image: str = "kserve/storage-initializer:v0.14.1"
    gpu_resource: str = "nvidia.com/gpu"
    gpu_node_label: str = "cloud.google.com/gke-accelerator"
    # The per-pod metric a custom-metrics adapter serves for requests-in-flight.
    inflight_metric: str = "rest_server_requests_in_progress"
    api: ApiVersions = field(default_factory=ApiVersions)


def config_name(model: Model) -> str:
    return f"{model.name}-config"


def cronjob_name(model: Model) -> str:
    return f"{model.name}{CRONJOB_SUFFIX}"


def selector_labels(model: Model, component: str) -> dict[str, str]:
    return {MODEL_LABEL: model.name, "app.kubernetes.io/component": component}


def labels(model: Model, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "modelyard-model",
        "app.kubernetes.io/instance": model.name,
        "app.kubernetes.io/version": model.spec.version,
        "app.kubernetes.io/part-of": "modelyard",
        "app.kubernetes.io/managed-by": "modelyard-operator",
        **selector_labels(model, component),
    }


def metadata(model: Model, name: str, component: str) -> dict[str, Any]:
    return {"name": name, "namespace": model.namespace, "labels": labels(model, component)}


def content_hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def model_dir(model: Model) -> str:
    return f"{MODELS_DIR}/{model.model_name}"


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_USER,
        "runAsGroup": RUN_USER,
        "fsGroup": RUN_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def resources(model: Model, options: RenderOptions) -> dict[str, Any]:
    wanted = model.spec.deployment.resources
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if wanted.cpu:
        # No CPU limit: throttling a model server hurts latency more than it protects.
        requests["cpu"] = wanted.cpu
    if wanted.memory:
        requests["memory"] = limits["memory"] = wanted.memory
    if wanted.gpu:
        # Extended resources are requested through limits (requests must equal them).
        # Quantities are strings: server-side apply refuses a bare number.
        limits[options.gpu_resource] = str(wanted.gpu.count)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def env(model: Model) -> list[dict[str, Any]]:
    # Declarations say ${VAR}; secrets reach the pod as variables, never through a ConfigMap.
    return [
        {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.secret, "key": ref.key}}}
        for name, ref in sorted(model.spec.secret_env.items())
    ] + [{"name": "HOME", "value": "/tmp"}]


def volume_mounts(model: Model) -> list[dict[str, Any]]:
    return [
        {"name": "model", "mountPath": model_dir(model)},
        {
            "name": "config",
            "mountPath": f"{model_dir(model)}/{DECLARATION_KEY}",
            "subPath": DECLARATION_KEY,
            "readOnly": True,
        },
        # The root filesystem is read-only; MLServer and the libraries write here.
        {"name": "tmp", "mountPath": "/tmp"},
    ]


def volumes(model: Model) -> list[dict[str, Any]]:
    return [
        {"name": "model", "emptyDir": {}},
        {"name": "config", "configMap": {"name": config_name(model)}},
        {"name": "tmp", "emptyDir": {}},
    ]


def local_uri(uri: str) -> str:
    """Where the fetched artifact is, relative to the model folder."""
    basename = uri.rstrip("/").rsplit("/", 1)[-1]
    # A file (has a suffix) is fetched as itself; a prefix is fetched as a folder.
    return f"{ARTIFACTS}/{basename}" if "." in basename and not uri.endswith("/") else ARTIFACTS


def init_containers(model: Model, options: RenderOptions) -> list[dict[str, Any]]:
    uri = model.spec.model.uri
    if not uri:
        return []
    return [
        {
            "name": "storage-initializer",
            "image": options.storage_initializer_image,
            "args": [uri, f"{model_dir(model)}/{ARTIFACTS}"],
            "env": env(model),
            "volumeMounts": [
                {"name": "model", "mountPath": model_dir(model)},
                {"name": "tmp", "mountPath": "/tmp"},
            ],
            "securityContext": container_security_context(),
        }
    ]


def scheduling(model: Model, options: RenderOptions) -> dict[str, Any]:
    """nodeSelector and tolerations of a pod, GPU placement included."""
    deployment = model.spec.deployment
    node_selector = dict(deployment.node_selector)
    tolerations = [t.model_dump(by_alias=True, exclude_none=True) for t in deployment.tolerations]
    gpu = deployment.resources.gpu
    if gpu is not None:
        if gpu.type:
            node_selector.setdefault(options.gpu_node_label, gpu.type)
        # GPU node pools are commonly tainted so that only GPU pods land there.
        gpu_toleration = {"key": options.gpu_resource, "operator": "Exists", "effect": "NoSchedule"}
        if gpu_toleration not in tolerations:
            tolerations.append(gpu_toleration)
    out: dict[str, Any] = {}
    if node_selector:
        out["nodeSelector"] = dict(sorted(node_selector.items()))
    if tolerations:
        out["tolerations"] = tolerations
    return out
