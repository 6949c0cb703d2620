"""Operator configuration from `MODELYARD_OPERATOR_*` environment variables, checked at
startup so that a typo stops the operator instead of silently using a default."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, Json, ValidationError, field_validator

from modelyard_operator.render.common import RenderOptions

PREFIX = "MODELYARD_OPERATOR_"
_DEFAULTS = RenderOptions()


class ConfigError(ValueError):
    pass


class GpuToleration(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str | None = None
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None

    def pairs(self) -> tuple[tuple[str, str], ...]:
        return tuple(sorted(self.model_dump(exclude_none=True).items()))


class OperatorConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # The renderers' defaults, each overridable by MODELYARD_OPERATOR_<NAME>.
    image: str = Field(default=_DEFAULTS.image, min_length=1)
    # Empty: the serving image's own initializer.
    storage_initializer_image: str = _DEFAULTS.storage_initializer_image
    gpu_resource: str = Field(default=_DEFAULTS.gpu_resource, min_length=1)
    gpu_node_label: str = Field(default=_DEFAULTS.gpu_node_label, min_length=1)
    # A JSON list of tolerations, e.g. [{"key": "nvidia.com/gpu", "operator": "Exists"}].
    gpu_tolerations: Json[list[GpuToleration]] | list[GpuToleration] = Field(
        default_factory=lambda: [
            GpuToleration.model_validate(dict(t)) for t in _DEFAULTS.gpu_tolerations
        ]
    )
    progress_deadline_seconds: int = Field(default=_DEFAULTS.progress_deadline_seconds, ge=10)
    inflight_metric: str = Field(default=_DEFAULTS.inflight_metric, min_length=1)
    default_cpu: str = Field(default=_DEFAULTS.default_cpu, min_length=1)
    default_memory: str = Field(default=_DEFAULTS.default_memory, min_length=1)
    network_policy: bool = _DEFAULTS.network_policy
    # A JSON list of NetworkPolicyPeers, e.g. [{"namespaceSelector": {"matchLabels": ...}}].
    network_policy_from: str = _DEFAULTS.network_policy_from
    monitoring_namespace: str = Field(default=_DEFAULTS.monitoring_namespace, min_length=1)
    # The package index of Models' environment builds (spec.buildEnvironment); empty: PyPI.
    environment_index_url: str = Field(
        default=_DEFAULTS.environment_index_url, pattern=r"^(https?://\S+)?$"
    )
    # Seconds between resolutions of a Model's moving registry URI (an alias, a stage,
    # latest) when the Model sets no spec.mlflow.pollSeconds (the chart's mlflow.pollSeconds).
    registry_poll_seconds: float = Field(default=60.0, gt=0)
    # Seconds between reads of a running rollout's comparison (the chart's
    # operator.rolloutPollSeconds), and where a Model's server is read instead of its
    # Service ({name} and {namespace} filled in), for an operator run outside the cluster.
    rollout_poll_seconds: float = Field(default=15.0, gt=0)
    rollout_url: str = Field(default="", pattern=r"^(https?://\S+)?$")
    # Seconds before retrying after a transient API error (409, 429, 5xx, connection).
    retry_delay: float = Field(default=10.0, gt=0)

    @field_validator("network_policy_from")
    @classmethod
    def _peers(cls, value: str) -> str:
        try:
            peers = json.loads(value)
        except ValueError as e:
            raise ValueError(f"not JSON ({e})") from None
        if not isinstance(peers, list) or not all(isinstance(p, dict) and p for p in peers):
            raise ValueError("must be a JSON list of NetworkPolicy peers (objects)")
        return value

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorConfig:
        environ = os.environ if environ is None else environ
        values = {k[len(PREFIX) :].lower(): v for k, v in environ.items() if k.startswith(PREFIX)}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = [
                f"{PREFIX}{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()
            ]
            known = ", ".join(PREFIX + name.upper() for name in cls.model_fields)
            raise ConfigError(
                "invalid operator configuration: " + "; ".join(problems) + f" (known: {known})"
            ) from None
