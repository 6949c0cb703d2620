"""The CronJob running scheduled batch predictions with `modelyard batch run`."""

from __future__ import annotations

from typing import Any

from modelyard_operator.render.common import (
    RenderOptions,
    container_security_context,
    cronjob_name,
    env,
    init_containers,
    labels,
    metadata,
    model_dir,
    pod_security_context,
    resources,
    scheduling,
    volume_mounts,
    volumes,
)
from modelyard_operator.spec import Model, SpecError

COMPONENT = "batch"


def render_cronjob(model: Model, options: RenderOptions) -> dict[str, Any] | None:
    """None without `predictions.schedule` (the operator then removes any CronJob)."""
    predictions = model.spec.predictions
    if predictions is None or not predictions.schedule:
        return None
    shards = predictions.shards
    if shards > 1 and not options.api.indexed_jobs:
        raise SpecError(
            f"model '{model.name}': predictions.shards needs Indexed Jobs (Kubernetes 1.22+); "
            "this cluster is older: remove shards or upgrade"
        )
    batch_env = [
        *env(model),
        # Every shard of one run shares the run id: the Job's name, unique per schedule.
        {
            "name": "MODELYARD_RUN_ID",
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['job-name']"}},
        },
    ]
    args = ["--run-id", "$(MODELYARD_RUN_ID)"]
    if shards > 1:
        # Each pod of the Indexed Job scores shard $JOB_COMPLETION_INDEX of --shards.
        args += ["--shards", str(shards)]
    container = {
        "name": "batch",
        "image": model.spec.image or options.image,
        "command": ["modelyard", "batch", "run", model_dir(model)],
        "args": args,
        "workingDir": "/tmp",
        "env": batch_env,
        "resources": resources(model, options),
        "volumeMounts": volume_mounts(model),
        "securityContext": container_security_context(),
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "securityContext": pod_security_context(),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "containers": [container],
        "volumes": volumes(model),
        **scheduling(model, options),
    }
    if inits := init_containers(model, options):
        pod_spec["initContainers"] = inits
    job_spec: dict[str, Any] = {
        "backoffLimit": 2,
        "template": {"metadata": {"labels": labels(model, COMPONENT)}, "spec": pod_spec},
    }
    if shards > 1:
        job_spec.update(completionMode="Indexed", completions=shards, parallelism=shards)
    return {
        "apiVersion": options.api.cronjob,
        "kind": "CronJob",
        "metadata": metadata(model, cronjob_name(model), COMPONENT),
        "spec": {
            "schedule": predictions.schedule,
            # A run still going when the next is due is not doubled up.
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": 3600,
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {"metadata": {"labels": labels(model, COMPONENT)}, "spec": job_spec},
        },
    }
