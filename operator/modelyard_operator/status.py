"""A Model's status from its Deployment: pure functions, so the rules are testable alone."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

# Ready=False reasons that describe the spec itself: they hold until the spec changes.
SPEC_FAILURES = ("InvalidSpec", "InvalidManifest")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ready_condition(conditions: Sequence[Mapping[str, Any]] | None) -> Mapping[str, Any] | None:
    return next((c for c in conditions or () if c.get("type") == "Ready"), None)


def failed_for(status: Mapping[str, Any], generation: int | None) -> bool:
    """Whether the current generation was refused (its status must not flip to Ready)."""
    condition = ready_condition(status.get("conditions"))
    return (
        condition is not None
        and condition.get("reason") in SPEC_FAILURES
        and condition.get("observedGeneration") == generation
    )


def condition(
    ready: bool,
    reason: str,
    message: str,
    generation: int | None,
    previous: Mapping[str, Any] | None,
) -> dict[str, Any]:
    status = "True" if ready else "False"
    # The transition time moves only when the condition's status does.
    since = previous.get("lastTransitionTime") if previous else None
    if previous is None or previous.get("status") != status or since is None:
        since = now()
    out: dict[str, Any] = {
        "type": "Ready",
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
    }
    if generation is not None:
        out["observedGeneration"] = generation
    return out


def deployment_readiness(deployment: Mapping[str, Any] | None) -> tuple[bool, str, str, int]:
    """(ready, reason, message, ready replicas) of a Deployment as the API server has it."""
    if deployment is None:
        return False, "DeploymentMissing", "the Deployment does not exist yet", 0
    spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
    wanted = spec.get("replicas", 1)
    ready = status.get("readyReplicas") or 0
    updated = status.get("updatedReplicas") or 0
    observed = (status.get("observedGeneration") or 0) >= deployment["metadata"].get(
        "generation", 0
    )
    # Pods of an older version still counted: the rollout is not over (with one replica,
    # the old pod is ready and the new one updated before the new one is ready).
    leftover = (status.get("replicas") or 0) > updated
    if observed and ready >= wanted and updated >= wanted and not leftover:
        return True, "DeploymentReady", f"{ready}/{wanted} replicas ready", ready
    return False, "DeploymentProgressing", f"{ready}/{wanted} replicas ready", ready


def rollout_stalled(deployment: Mapping[str, Any] | None) -> str | None:
    """The Deployment controller's message when the rollout passed its progress deadline."""
    for c in ((deployment or {}).get("status") or {}).get("conditions") or ():
        if (
            c.get("type") == "Progressing"
            and c.get("status") == "False"
            and c.get("reason") == "ProgressDeadlineExceeded"
        ):
            return c.get("message") or "progress deadline exceeded"
    return None


def serving_status(
    model_status: Mapping[str, Any],
    generation: int | None,
    deployment: Mapping[str, Any] | None,
    pod_problems: Sequence[str] = (),
) -> dict[str, Any]:
    """phase, readyReplicas and the Ready condition for a Model whose spec was applied.

    A rollout past its progress deadline is `Failed` (reason `RolloutStalled`), with why
    its new pods are not ready (`pod_problems`); the previous version keeps serving."""
    ready, reason, message, replicas = deployment_readiness(deployment)
    previous = ready_condition(model_status.get("conditions"))
    stalled = None if ready else rollout_stalled(deployment)
    if stalled is not None:
        message = (
            f"the rollout stalled: {stalled}; {replicas} ready replica(s) of the previous "
            "version keep serving"
        )
        if pod_problems:
            message += "; " + "; ".join(pod_problems)
        return {
            "phase": "Failed",
            "readyReplicas": replicas,
            "conditions": [condition(False, "RolloutStalled", message, generation, previous)],
        }
    return {
        "phase": "Ready" if ready else "Pending",
        "readyReplicas": replicas,
        "conditions": [condition(ready, reason, message, generation, previous)],
    }


def failed_status(
    model_status: Mapping[str, Any], generation: int | None, reason: str, message: str
) -> dict[str, Any]:
    previous = ready_condition(model_status.get("conditions"))
    return {
        "phase": "Failed",
        "observedGeneration": generation,
        "conditions": [condition(False, reason, message, generation, previous)],
    }


def changed(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    return any(current.get(key) != value for key, value in wanted.items())
