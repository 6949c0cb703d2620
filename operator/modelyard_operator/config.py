"""Operator configuration from `MODELYARD_OPERATOR_*` environment variables, checked at
startup so that a typo stops the operator instead of silently using a default."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, Json, ValidationError

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
    # Seconds before retrying after a transient API error (409, 429, 5xx, connection).
    retry_delay: float = Field(default=10.0, gt=0)

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
