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
    if observed and ready >= wanted and updated >= wanted:
        return True, "DeploymentReady", f"{ready}/{wanted} replicas ready", ready
    return False, "DeploymentProgressing", f"{ready}/{wanted} replicas ready", ready


def serving_status(
    model_status: Mapping[str, Any], generation: int | None, deployment: Mapping[str, Any] | None
) -> dict[str, Any]:
    """phase, readyReplicas and the Ready condition for a Model whose spec was applied."""
    ready, reason, message, replicas = deployment_readiness(deployment)
    previous = ready_condition(model_status.get("conditions"))
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
