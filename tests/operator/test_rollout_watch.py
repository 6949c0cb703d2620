"""The operator following a running rollout (rollout_watch.py) on the real API server:
its timer reads the comparison from a real `modelyard serve` whose model has a remote
candidate (another real server), as the Model's pods and its candidate Deployment do in
a cluster, writes it into status.rollout.comparison and acts on the declared rules.
No node runs pods here, so the operator is pointed at the loopback servers
(MODELYARD_OPERATOR_ROLLOUT_URL) and the Kubernetes objects are what is checked."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from modelyard_operator.rollout_watch import follow

from tests.operator.cases import MINIMAL
from tests.operator.conftest import Models
from tests.serving.test_rollouts import SHADOW, declaration, infer, write
from tests.support.kube import wait_for
from tests.support.server import ServerProcess, running

RULES: dict[str, dict[str, Any]] = {
    "promote": {**SHADOW, "promote_when": {"min_requests": 20, "min_agreement": 0.99}},
    "abort": {**SHADOW, "abort_when": {"min_requests": 20, "agreement_below": 0.9}},
}


@pytest.fixture
def servers(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """An incumbent server of model 'iris' version 1 with a rollout whose candidate,
    version 2, is the other server (it answers every 4th input differently for 'abort')."""
    rules = RULES[request.param]
    write(tmp_path / "incumbent" / "iris", declaration("iris", "1", rules))
    shift = {"shift_every": 4} if request.param == "abort" else {}
    write(tmp_path / "candidate" / "iris", declaration("iris", "2", rules, **shift))
    candidate = ServerProcess(tmp_path / "candidate", tmp_path / "candidate.log")
    incumbent = ServerProcess(
        tmp_path / "incumbent",
        tmp_path / "incumbent.log",
        ["--rollout-candidate-url", f"iris={candidate.base}"],
    )
    with running(candidate), running(incumbent):
        yield incumbent, candidate


def model_spec(version: str, rules: dict[str, Any]) -> dict[str, Any]:
    spec = copy.deepcopy(MINIMAL)
    spec["version"] = version
    spec["model"]["uri"] = f"s3://models/iris/{version}/model.joblib"
    spec["rollout"] = copy.deepcopy(rules)
    return spec


def rollout_status(models: Models) -> dict[str, Any]:
    return dict((models.get("iris").get("status") or {}).get("rollout") or {})


def deployment_version(models: Models, name: str) -> str | None:
    found = models.child("apps/v1", "Deployment", name)
    return None if found is None else found["metadata"]["labels"]["app.kubernetes.io/version"]


@pytest.mark.parametrize("servers", ["promote", "abort"], indirect=True)
def test_the_declared_rules_act_on_the_comparison_read_from_the_server(
    servers: tuple[ServerProcess, ServerProcess],
    models: Models,
    run_operator: Callable[[], Any],
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    incumbent, _ = servers
    verdict = request.node.callspec.params["servers"]
    monkeypatch.setenv("MODELYARD_OPERATOR_ROLLOUT_URL", incumbent.base)
    monkeypatch.setenv("MODELYARD_OPERATOR_ROLLOUT_POLL_SECONDS", "1")
    with run_operator():
        models.create("iris", model_spec("1", RULES[verdict]))
        wait_for(lambda: deployment_version(models, "iris") == "1", 30, what="version 1")
        models.replace_spec("iris", model_spec("2", RULES[verdict]))
        wait_for(
            lambda: rollout_status(models).get("phase") == "Running", 30, what="rollout Running"
        )
        # Fewer calls than the rules need: the comparison shows, nothing is decided.
        with requests.Session() as s:
            for i in range(8):
                infer(s, incumbent, "iris", float(i))
        wait_for(
            lambda: (rollout_status(models).get("comparison") or {}).get("requestsCompared") == 8,
            30,
            what="the comparison of 8 calls in status.rollout",
        )
        running = rollout_status(models)
        assert running["phase"] == "Running" and running["comparison"].get("decision") is None
        assert models.child("apps/v1", "Deployment", "iris-candidate") is not None

        with requests.Session() as s:
            for i in range(8, 40):
                infer(s, incumbent, "iris", float(i))
        ended = "Promoted" if verdict == "promote" else "Aborted"
        wait_for(lambda: rollout_status(models).get("phase") == ended, 60, what=ended)
        wait_for(
            lambda: models.child("apps/v1", "Deployment", "iris-candidate") is None,
            30,
            what="the candidate Deployment deleted",
        )
        done = rollout_status(models)
        assert done["comparison"]["decision"] == verdict
        assert done["comparison"]["requestsCompared"] >= 20
        if verdict == "promote":
            assert done["comparison"]["agreement"] == 1.0
            wait_for(lambda: deployment_version(models, "iris") == "2", 30, what="version 2")
        else:
            assert done["comparison"]["agreement"] < 0.9
            assert deployment_version(models, "iris") == "1"
        # Acted on once, through the same action a person sets.
        wait_for(
            lambda: "action" not in (models.get("iris")["spec"].get("rollout") or {}),
            30,
            what="the action removed",
        )


def test_a_server_that_does_not_answer_changes_nothing() -> None:
    patch, decision, error = follow({"candidate": "2"}, None, "http://iris.ns.svc:8080")
    assert decision is None and patch == {"comparisonError": error}
    assert error is not None and "http://iris.ns.svc:8080" in error
    # Numbers of an earlier candidate (pods not yet given this one) are not acted on.
    found = {"candidate": "1", "compared": 100, "decision": ["abort", "agreement 0.1"]}
    patch, decision, error = follow({"candidate": "2"}, found, "http://x")
    assert decision is None and "not '2'" in (error or "")
    found = {**found, "candidate": "2"}
    patch, decision, error = follow({"candidate": "2"}, found, "http://x")
    assert decision == "abort" and error is None
    assert patch["comparison"]["reason"] == "agreement 0.1"
