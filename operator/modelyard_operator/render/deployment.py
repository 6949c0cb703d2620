"""The Deployment serving the model over V2 REST and gRPC with `modelyard serve`."""

from __future__ import annotations

from typing import Any

from modelyard.declarations.settings import server_settings
from modelyard_operator.render.common import (
    CONFIG_HASH_ANNOTATION,
    GRPC_PORT,
    HTTP_PORT,
    METRICS_PORT,
    MODELS_DIR,
    RenderOptions,
    container_security_context,
    content_hash,
    env,
    init_containers,
    labels,
    metadata,
    pod_security_context,
    resources,
    scheduling,
    selector_labels,
    server_processes,
    server_secrets,
    volume_mounts,
    volumes,
)
from modelyard_operator.render.config import config_files, declaration_for_pod
from modelyard_operator.spec import Model

COMPONENT = "server"
MIB = 1024 * 1024
PRESTOP_SECONDS = 5


def serve_command(model: Model) -> list[str]:
    # `modelyard serve` takes the server's settings as flags: these are settings.json's.
    settings = server_settings(declaration_for_pod(model))
    command = [
        "modelyard", "serve", MODELS_DIR,
        "--host", "0.0.0.0",
        "--http-port", str(HTTP_PORT),
        "--grpc-port", str(GRPC_PORT),
        "--metrics-port", str(METRICS_PORT),
        "--workers", str(settings["parallel_workers"]),
        "--processes", str(server_processes(model)),
        # The folder changes only by a rollout (the ConfigMap's hash is in the template).
        "--no-watch",
    ]  # fmt: skip
    if "grpc_max_message_length" in settings:
        command += ["--max-message-mb", str(settings["grpc_max_message_length"] // MIB)]
    if model.spec.serving.max_inflight_mb is not None:
        command += ["--max-inflight-mb", str(model.spec.serving.max_inflight_mb)]
    for secret in server_secrets(model):
        command += secret.args()
    return command


def probe(path: str, period: int, failures: int, tls: bool = False) -> dict[str, Any]:
    # Over TLS the kubelet speaks HTTPS (it checks no certificate and sends none: the
    # health paths stay open with tokens or client certificates required).
    get = {"path": path, "port": "http", **({"scheme": "HTTPS"} if tls else {})}
    return {
        "httpGet": get,
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 3,
    }


def render_deployment(model: Model, options: RenderOptions) -> dict[str, Any]:
    spec = model.spec
    secrets = server_secrets(model)
    tls = spec.tls is not None
    container = {
        "name": "server",
        "image": spec.image or options.image,
        "command": serve_command(model),
        "workingDir": "/tmp",
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "env": env(model),
        "resources": resources(model, options),
        # Loading a large model can take minutes: the server is started once every one of
        # its processes has tried, and only then do liveness and readiness begin.
        "startupProbe": probe("/v2/health/ready", 5, 120, tls),
        "livenessProbe": probe("/v2/health/live", 10, 3, tls),
        # Ready when this pod's one model is, not merely tried: a version that fails to
        # load never takes traffic, and a rollout to it stops with the old pods serving.
        "readinessProbe": probe(f"/v2/models/{model.model_name}/ready", 5, 2, tls),
        "volumeMounts": [*volume_mounts(model), *(s.mount() for s in secrets)],
        "securityContext": container_security_context(),
        # A terminating pod leaves the Service's endpoints a moment after it is told to
        # stop (kube-proxy rewrites every node's rules): it keeps answering meanwhile,
        # so that a rollout fails no request.
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SECONDS)]}}},
    }
    config = config_files(model)
    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector_labels(model, COMPONENT)},
        "revisionHistoryLimit": 3,
        # A new version whose pods never become ready stalls here and marks the Model
        # Failed; its old pods keep serving.
        "progressDeadlineSeconds": options.progress_deadline_seconds,
        # Never below the serving capacity during a rollout.
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
        },
        "template": {
            "metadata": {
                "labels": labels(model, COMPONENT),
                # A changed declaration rolls the pods (subPath mounts never refresh).
                "annotations": {CONFIG_HASH_ANNOTATION: content_hash(config)},
            },
            "spec": {
                "securityContext": pod_security_context(),
                "automountServiceAccountToken": False,
                "enableServiceLinks": False,
                "terminationGracePeriodSeconds": 30,
                "initContainers": init_containers(model, options),
                "containers": [container],
                "volumes": [*volumes(model), *(s.volume_spec() for s in secrets)],
                **scheduling(model, options),
            },
        },
    }
    if not deployment_spec["template"]["spec"]["initContainers"]:
        del deployment_spec["template"]["spec"]["initContainers"]
    if spec.deployment.autoscaling is None:
        deployment_spec["replicas"] = spec.deployment.replicas.min
    # With an autoscaler, replicas is its field: applying it would undo every scaling.
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(model, model.name, COMPONENT),
        "spec": deployment_spec,
    }
