"""Names, labels and pod parts shared by the renderers. Pure: no kopf, no client.

The pod's layout: `modelyard serve /models` serves one model folder, `/models/<name>`, an
emptyDir that the storage initializer fills before the server starts (the remote
`folder`, then a remote `model.uri`), with the ConfigMap's three files mounted into it
by name. Relative paths of the declaration (model.uri, predictor.py, features.sql)
resolve in that folder exactly as they do on a laptop, and a model.yaml or
model-settings.json that came with the fetched folder is shadowed by the ConfigMap's.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from modelyard.declarations.load import DECLARATION_FILENAME
from modelyard.declarations.settings import MODEL_SETTINGS_FILENAME, SERVER_SETTINGS_FILENAME
from modelyard_operator.spec import (
    CRONJOB_SUFFIX,
    MLFLOW_CREDENTIALS_KEY,
    TRACKING_URI_ENV,
    Model,
    fetched_as_folder,
    is_remote,
)

HTTP_PORT, GRPC_PORT, METRICS_PORT = 8080, 8081, 8082
MODELS_DIR = "/models"
# The ConfigMap's keys, each a file of the model folder: the declaration the server
# loads (a declaration wins over model-settings.json) and the MLServer settings
# generated from it, which are what MLServer runs with.
CONFIG_FILES = (DECLARATION_FILENAME, MODEL_SETTINGS_FILENAME, SERVER_SETTINGS_FILENAME)
CONFIG_HASH_ANNOTATION = "modelyard.io/config-hash"
MODEL_LABEL = "modelyard.io/model"
RUN_USER = 1000
# Who builds a Model's environment (spec.buildEnvironment): not the server's user, and
# with the model folder mounted read-only, so a package's build code cannot change it.
BUILD_USER = 1001
# The environments the build writes and the server reads (read-only), and the variable
# both find them by (modelyard.environments.ENVS_DIR_VAR).
ENVS_DIR = "/var/lib/modelyard/envs"
# modelyard.environments' variables (a test holds them equal): not imported, as the
# operator image has none of the build's dependencies (packaging).
ENVS_DIR_VAR, INDEX_URL_VAR = "MODELYARD_ENVS_DIR", "MODELYARD_ENV_INDEX_URL"
# One server process per requested core, never per node core: each process holds its
# own copy of the model, so the pod's memory stays what the Model asked for.
MAX_PROCESSES = 4


@dataclass(frozen=True)
class ApiVersions:
    """The API versions to render; the operator picks those the cluster serves."""

    hpa: str = "autoscaling/v2"
    cronjob: str = "batch/v1"
    pdb: str = "policy/v1"
    # Indexed Jobs (sharded batch runs) exist from Kubernetes 1.22.
    indexed_jobs: bool = True
    service_monitor: bool = False

    @classmethod
    def for_kubernetes(cls, minor: int, service_monitor: bool = False) -> ApiVersions:
        """What a 1.<minor> cluster serves, for rendering without asking one."""
        return cls(
            hpa="autoscaling/v2" if minor >= 23 else "autoscaling/v2beta2",
            cronjob="batch/v1" if minor >= 21 else "batch/v1beta1",
            pdb="policy/v1" if minor >= 21 else "policy/v1beta1",
            indexed_jobs=minor >= 22,
            service_monitor=service_monitor,
        )


@dataclass(frozen=True)
class RenderOptions:
    image: str = "ghcr.io/modelyard/modelyard:0.1.0"
    # Empty: the serving image's own initializer (modelyard_operator.storage). Otherwise
    # an image with KServe's convention, `<uri> <dest>` as its arguments (e.g.
    # kserve/storage-initializer): s3, gs, azure, http(s); archives unpacked into <dest>.
    storage_initializer_image: str = ""
    gpu_resource: str = "nvidia.com/gpu"
    # The node label naming a GPU's type, matched against `gpu.type` (a Model's
    # `gpu.nodeLabel` overrides it). NVIDIA's GPU feature discovery sets this one on any
    # cluster; GKE's node pools carry cloud.google.com/gke-accelerator instead.
    gpu_node_label: str = "nvidia.com/gpu.product"
    # Added to a GPU pod's tolerations: GPU node pools are commonly tainted so that only
    # GPU pods land there (GKE and the NVIDIA GPU operator taint nvidia.com/gpu).
    gpu_tolerations: tuple[tuple[tuple[str, str], ...], ...] = (
        (("effect", "NoSchedule"), ("key", "nvidia.com/gpu"), ("operator", "Exists")),
    )
    # A rollout making no progress for this long marks the Model Failed (the previous
    # version keeps serving: maxUnavailable is 0).
    progress_deadline_seconds: int = 600
    # The per-pod metric a custom-metrics adapter serves for requests-in-flight: the
    # server's gauge of V2 requests being answered (REST and gRPC), labelled by model.
    inflight_metric: str = "modelyard_requests_in_flight"
    # What a Model that sets no CPU or memory gets: a pod without requests is scheduled
    # anywhere and evicted first, one without a memory limit can take a node's memory.
    default_cpu: str = "500m"
    default_memory: str = "1Gi"
    # A NetworkPolicy per Model (a Model's spec.networkPolicy overrides each field):
    # the REST and gRPC ports from these peers (JSON NetworkPolicyPeers), the metrics
    # port from the monitoring namespace's pods.
    network_policy: bool = True
    network_policy_from: str = (
        '[{"namespaceSelector": {"matchLabels": {"modelyard.io/access": "true"}}},'
        ' {"podSelector": {"matchLabels": {"modelyard.io/access": "true"}}}]'
    )
    monitoring_namespace: str = "monitoring"
    # The package index a Model's environment build (spec.buildEnvironment) installs
    # from; empty: uv's default (PyPI). Never a model folder's choice.
    environment_index_url: str = ""
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
    # No CPU limit: throttling a model server hurts latency more than it protects.
    requests["cpu"] = wanted.cpu or options.default_cpu
    requests["memory"] = limits["memory"] = wanted.memory or options.default_memory
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
    ] + [{"name": "HOME", "value": "/tmp"}, *env_dir(model), *registry_env(model)]


def registry_env(model: Model) -> list[dict[str, Any]]:
    """The tracking server the server reads a registry URI's pinned version from."""
    tracking_uri = model.tracking_uri() if model.registry_uri else None
    return [{"name": TRACKING_URI_ENV, "value": tracking_uri}] if tracking_uri else []


# MLflow's credentials file (~/.mlflow/credentials, HOME being /tmp): a file, not
# variables, so the password is in no process's environment.
MLFLOW_CREDENTIALS_DIR = "/tmp/.mlflow"


def mlflow_credentials(model: Model) -> str | None:
    """The Secret of a registry model's MLflow credentials file, if it names one."""
    return model.spec.mlflow.credentials_secret if model.registry_uri else None


def env_dir(model: Model) -> list[dict[str, Any]]:
    """Where the server finds the environment the build init container made."""
    if not model.spec.build_environment:
        return []
    return [{"name": ENVS_DIR_VAR, "value": ENVS_DIR}]


# Where the server container finds its Secrets (the admin token, `auth`, `tls`) as files:
# a file, not a variable, so the token is in no process's environment.
SECRETS_DIR = "/etc/modelyard"
TLS_CERT, TLS_KEY = "tls.crt", "tls.key"  # a kubernetes.io/tls Secret's keys
# Owner and group may read (the pod's fsGroup is the server's group); no one else.
SECRET_MODE = 0o440


@dataclass(frozen=True)
class MountedSecret:
    """A Secret mounted into the server container for one of `modelyard serve`'s flags."""

    volume: str
    secret: str
    files: tuple[tuple[str, str], ...]  # (key in the Secret, file name), one per flag
    flags: tuple[str, ...]

    @property
    def directory(self) -> str:
        return f"{SECRETS_DIR}/{self.volume}"

    def args(self) -> list[str]:
        return [a for flag, (_, name) in zip(self.flags, self.files, strict=True)
                for a in (flag, f"{self.directory}/{name}")]  # fmt: skip

    def volume_spec(self) -> dict[str, Any]:
        items = [{"key": key, "path": name} for key, name in self.files]
        return {
            "name": self.volume,
            "secret": {"secretName": self.secret, "items": items, "defaultMode": SECRET_MODE},
        }

    def mount(self) -> dict[str, Any]:
        return {"name": self.volume, "mountPath": self.directory, "readOnly": True}


def server_secrets(model: Model) -> list[MountedSecret]:
    """The Secrets the server container mounts: the admin token of the repository API
    (without one, the server refuses that API), inference authentication and TLS."""
    spec = model.spec
    found = []
    if spec.admin_token_secret is not None:
        ref = spec.admin_token_secret
        found.append(
            MountedSecret("admin-token", ref.secret, ((ref.key, "token"),), ("--admin-token-file",))
        )
    if spec.auth.inference_token_secret is not None:
        ref = spec.auth.inference_token_secret
        found.append(
            MountedSecret(
                "inference-tokens", ref.secret, ((ref.key, "tokens"),), ("--inference-token-file",)
            )
        )
    if spec.tls is not None:
        pair = ((TLS_CERT, TLS_CERT), (TLS_KEY, TLS_KEY))
        found.append(MountedSecret("tls", spec.tls.secret, pair, ("--tls-cert", "--tls-key")))
    if spec.auth.client_ca_secret is not None:
        ref = spec.auth.client_ca_secret
        found.append(
            MountedSecret("client-ca", ref.secret, ((ref.key, "ca.crt"),), ("--tls-client-ca",))
        )
    return found


def volume_mounts(model: Model) -> list[dict[str, Any]]:
    folder = model_dir(model)
    return [
        {"name": "model", "mountPath": folder},
        *(
            {"name": "config", "mountPath": f"{folder}/{key}", "subPath": key, "readOnly": True}
            for key in CONFIG_FILES
        ),
        # The root filesystem is read-only; MLServer and the libraries write here.
        {"name": "tmp", "mountPath": "/tmp"},
        # The built environment: the server only reads it.
        *(
            [{"name": "envs", "mountPath": ENVS_DIR, "readOnly": True}]
            if model.spec.build_environment
            else []
        ),
        *(
            [{"name": "mlflow-credentials", "mountPath": MLFLOW_CREDENTIALS_DIR, "readOnly": True}]
            if mlflow_credentials(model)
            else []
        ),
    ]


def volumes(model: Model) -> list[dict[str, Any]]:
    built = [
        {"name": "envs", "emptyDir": {}},
        # The build's own HOME and uv cache, not the server's /tmp.
        {"name": "build-tmp", "emptyDir": {}},
    ]
    return [
        {"name": "model", "emptyDir": {}},
        {"name": "config", "configMap": {"name": config_name(model)}},
        {"name": "tmp", "emptyDir": {}},
        *(built if model.spec.build_environment else []),
        *(
            [
                {
                    "name": "mlflow-credentials",
                    "secret": {
                        "secretName": secret,
                        "items": [{"key": MLFLOW_CREDENTIALS_KEY, "path": "credentials"}],
                        "defaultMode": SECRET_MODE,
                    },
                }
            ]
            if (secret := mlflow_credentials(model))
            else []
        ),
    ]


def pod_uri(uri: str) -> str:
    """model.uri as the server in the pod sees it, relative to the model folder."""
    if not is_remote(uri):
        return uri  # a file of the fetched folder
    if fetched_as_folder(uri):
        return "./"
    # A single file lands in the folder under its own name (a query string is not part of it).
    return urlparse(uri).path.rstrip("/").rsplit("/", 1)[-1]


def fetches(model: Model) -> list[tuple[str, str]]:
    """(init container name, URI) of everything fetched into the model folder, in order:
    the folder first, so that a remote model.uri lands over any copy inside it."""
    found = []
    if model.spec.folder:
        found.append(("fetch-folder", model.spec.folder))
    uri = model.spec.model.uri
    if uri and is_remote(uri):
        found.append(("fetch-model", uri))
    return found


# The serving image's storage initializer (operator/modelyard_operator/storage.py).
STORAGE_INITIALIZER = ["python", "-m", "modelyard_operator.storage"]


def storage_initializer(model: Model, options: RenderOptions) -> dict[str, Any]:
    if options.storage_initializer_image:
        return {"image": options.storage_initializer_image}
    return {"image": model.spec.image or options.image, "command": STORAGE_INITIALIZER}


def init_containers(model: Model, options: RenderOptions) -> list[dict[str, Any]]:
    fetching = [
        {
            "name": name,
            **storage_initializer(model, options),
            "args": [uri, model_dir(model)],
            "env": env(model),
            "volumeMounts": [
                {"name": "model", "mountPath": model_dir(model)},
                {"name": "tmp", "mountPath": "/tmp"},
            ],
            # The pod's requests are the larger of an init container's and the sum of
            # the others': the server's own cost nothing more, and bound the fetch.
            "resources": resources(model, options),
            "securityContext": container_security_context(),
        }
        for name, uri in fetches(model)
    ]
    if not model.spec.build_environment:
        return fetching
    return [*fetching, build_environment(model, options)]


def build_environment(model: Model, options: RenderOptions) -> dict[str, Any]:
    """`modelyard envs build` of the fetched folder's requirements file into the envs
    volume, where the server then finds it complete under the same hash (same image:
    same Python and packages). It runs as BUILD_USER with the model folder read-only,
    and the index is the operator's."""
    folder = model_dir(model)
    index = [{"name": INDEX_URL_VAR, "value": options.environment_index_url}]
    return {
        "name": "build-environment",
        "image": model.spec.image or options.image,
        "command": ["modelyard", "envs", "build", f"{folder}/{model.requirements_file}"],
        "workingDir": "/tmp",
        "env": [
            {"name": "HOME", "value": "/tmp"},
            {"name": ENVS_DIR_VAR, "value": ENVS_DIR},
            *(index if options.environment_index_url else []),
        ],
        "volumeMounts": [
            {"name": "model", "mountPath": folder, "readOnly": True},
            {"name": "envs", "mountPath": ENVS_DIR},
            {"name": "build-tmp", "mountPath": "/tmp"},
        ],
        "resources": resources(model, options),
        "securityContext": {
            **container_security_context(),
            "runAsUser": BUILD_USER,
            "runAsGroup": BUILD_USER,
        },
    }


def cpu_cores(quantity: str) -> float:
    """A Kubernetes CPU quantity ("2", "500m", "1.5") in cores."""
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def server_processes(model: Model) -> int:
    cpu = model.spec.deployment.resources.cpu
    if cpu is None:
        return 1
    return max(1, min(MAX_PROCESSES, math.ceil(cpu_cores(cpu))))


def scheduling(model: Model, options: RenderOptions) -> dict[str, Any]:
    """nodeSelector and tolerations of a pod, GPU placement included."""
    deployment = model.spec.deployment
    node_selector = dict(deployment.node_selector)
    tolerations = [t.model_dump(by_alias=True, exclude_none=True) for t in deployment.tolerations]
    gpu = deployment.resources.gpu
    if gpu is not None:
        if gpu.type:
            node_selector.setdefault(gpu.node_label or options.gpu_node_label, gpu.type)
        for pairs in options.gpu_tolerations:
            gpu_toleration = dict(pairs)
            if gpu_toleration not in tolerations:
                tolerations.append(gpu_toleration)
    out: dict[str, Any] = {}
    if node_selector:
        out["nodeSelector"] = dict(sorted(node_selector.items()))
    if tolerations:
        out["tolerations"] = tolerations
    return out
