"""Status rules and operator configuration, without a cluster."""

from __future__ import annotations

from typing import Any

import pytest
from modelyard_operator.config import ConfigError, OperatorConfig
from modelyard_operator.status import (
    deployment_readiness,
    failed_for,
    failed_status,
    serving_status,
)


def deployment(replicas: int, ready: int, updated: int, generation: int = 2) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": 2,
            "readyReplicas": ready,
            "updatedReplicas": updated,
        },
    }


@pytest.mark.parametrize(
    ("obj", "ready", "reason"),
    [
        (None, False, "DeploymentMissing"),
        (deployment(2, 1, 2), False, "DeploymentProgressing"),
        (deployment(2, 2, 1), False, "DeploymentProgressing"),  # old pods still serve
        (deployment(2, 2, 2, generation=3), False, "DeploymentProgressing"),  # not seen yet
        (deployment(2, 2, 2), True, "DeploymentReady"),
    ],
)
def test_deployment_readiness(obj: dict[str, Any] | None, ready: bool, reason: str) -> None:
    assert deployment_readiness(obj)[:2] == (ready, reason)


def test_transition_time_moves_only_with_the_condition() -> None:
    pending = serving_status({}, 1, deployment(2, 1, 2))
    since = pending["conditions"][0]["lastTransitionTime"]
    again = serving_status(pending, 1, deployment(2, 1, 2))
    assert again["conditions"][0]["lastTransitionTime"] == since
    old = "2000-01-01T00:00:00Z"
    previous = {"conditions": [{**pending["conditions"][0], "lastTransitionTime": old}]}
    ready = serving_status(previous, 1, deployment(2, 2, 2))
    assert ready["phase"] == "Ready"
    assert ready["conditions"][0]["lastTransitionTime"] != old


def test_a_refused_generation_stays_failed() -> None:
    failed = failed_status({}, 4, "InvalidSpec", "model 'x': bad")
    assert failed_for(failed, 4)
    assert not failed_for(failed, 5)  # a new spec gets a new chance


def test_config_defaults_and_overrides() -> None:
    assert OperatorConfig.from_env({}).image == "ghcr.io/modelyard/modelyard:0.1.0"
    config = OperatorConfig.from_env({"MODELYARD_OPERATOR_IMAGE": "r.example/s:1", "HOME": "/"})
    assert config.image == "r.example/s:1"


def test_config_typo_fails_fast_with_the_known_names() -> None:
    with pytest.raises(ConfigError, match="MODELYARD_OPERATOR_IMAEG: Extra inputs") as refused:
        OperatorConfig.from_env({"MODELYARD_OPERATOR_IMAEG": "x"})
    assert "MODELYARD_OPERATOR_IMAGE" in str(refused.value)
    with pytest.raises(ConfigError, match="RETRY_DELAY"):
        OperatorConfig.from_env({"MODELYARD_OPERATOR_RETRY_DELAY": "-1"})
