"""A Model's MLflow registry URI (``models:/churn@champion``, ``models:/churn/Production``,
``runs:/<run id>/model``) resolved to the version it names now and pinned.

The resolution is the server's own (``modelyard.serving.registry_uris``); this module
holds the operator's rules, as pure decisions over the Model's ``status.registry``:

- a first resolution pins ``models:/<name>/<N>`` and records it;
- a later one that names another version moves the pin, saying from which to which;
- one that fails (the tracking server unreachable, the alias or stage naming nothing)
  keeps the pin held, with a message naming the URI and the fix: a pod never loses the
  version it serves because the registry could not be asked.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from modelyard.serving.registry_uris import RegistryUriError, Resolved, is_registry_uri, resolve
from modelyard_operator.status import now

__all__ = ["Outcome", "is_registry_uri", "pinned_spec", "resolve_pin"]


@dataclass(frozen=True)
class Outcome:
    """What one resolution decides."""

    status: dict[str, Any] | None  # status.registry: the pin held after this resolution
    moved: str | None = None  # "from version 1 to 2", when the pin moved
    error: str | None = None  # why the registry could not be asked, when it could not

    @property
    def pinned(self) -> str | None:
        """The URI the pods are given, if any version is pinned."""
        return self.status["pinned"] if self.status else None


def registry_status(resolved: Resolved, server: str, resolved_at: str) -> dict[str, Any]:
    return {
        "uri": resolved.uri,
        "trackingUri": server,
        "pinned": resolved.pinned,
        "version": resolved.version,
        "runId": resolved.run_id,
        "source": resolved.source,
        "resolvedAt": resolved_at,
    }


def _label(status: Mapping[str, Any]) -> str:
    version = status.get("version")
    return f"version {version}" if version else str(status.get("pinned"))


def resolve_pin(
    uri: str,
    server: str,
    previous: Mapping[str, Any] | None,
    resolver: Callable[[str, str], Resolved] = resolve,
) -> Outcome:
    """Resolve ``uri`` against the tracking server ``server``, given the Model's
    ``status.registry`` so far (``previous``). A pin held for another URI or server is
    not kept: the Model now names something else."""
    held = (
        dict(previous)
        if previous and previous.get("uri") == uri and previous.get("trackingUri") == server
        else None
    )
    try:
        resolved = resolver(uri, server)
    except RegistryUriError as exc:
        if held is None:
            return Outcome(None, error=f"{exc}; no version is pinned, so nothing is served yet")
        return Outcome(held, error=f"{exc}; {_label(held)} ({held['pinned']}) stays pinned")
    if held is not None and held.get("pinned") == resolved.pinned:
        return Outcome(held)  # resolvedAt stays the time this version was pinned
    status = registry_status(resolved, server, now())
    moved = f"from {_label(held)} to {_label(status)}" if held is not None else None
    return Outcome(status, moved=moved)


def pinned_spec(spec: Mapping[str, Any], status: Mapping[str, Any]) -> dict[str, Any]:
    """A Model's spec with the version ``status.registry`` pins in place of its registry
    URI, and the tracking server it was resolved against: what the pods are given, so
    that none of them resolves an alias or a stage, and a restart serves the same one."""
    pinned = dict(spec)
    pinned["model"] = {**(spec.get("model") or {}), "uri": status["pinned"]}
    pinned["mlflow"] = {**(spec.get("mlflow") or {}), "trackingUri": status["trackingUri"]}
    return pinned
