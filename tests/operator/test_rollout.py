"""A Model with `rollout` on the real API server: a new version runs as the candidate
Deployment beside the incumbent's, and `spec.rollout.action` promotes or aborts it. No
node runs pods here, so the objects and the status are what is checked, not traffic."""

from __future__ import annotations

import copy
from typing import Any

from kopf.testing import KopfRunner
from modelyard_operator.rollouts import Plan, plan
from modelyard_operator.spec import Model

from tests.operator.cases import MINIMAL
from tests.operator.conftest import Models
from tests.support.kube import wait_for

# What a Model without autoscaling or a schedule has.
SERVING = {
    ("v1", "ConfigMap", "{}-config"),
    ("apps/v1", "Deployment", "{}"),
    ("v1", "Service", "{}"),
    ("networking.k8s.io/v1", "NetworkPolicy", "{}"),
}
SPEC: dict[str, Any] = {**MINIMAL, "rollout": {"mode": "shadow", "sample": 0.5}}


def with_version(version: str, action: str | None = None) -> dict[str, Any]:
    spec = copy.deepcopy(SPEC)
    spec["version"] = version
    spec["model"]["uri"] = f"s3://models/iris/{version}/model.joblib"
    if action is not None:
        spec["rollout"]["action"] = action
    return spec


def candidate_urls(models: Models) -> list[str]:
    """The `--rollout-candidate-url` values of the Model's (incumbent's) server."""
    deployment = models.child("apps/v1", "Deployment", "iris")
    assert deployment is not None
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    return [command[i + 1] for i, a in enumerate(command) if a == "--rollout-candidate-url"]


def version_of(obj: dict[str, Any] | None) -> str | None:
    return None if obj is None else obj["metadata"]["labels"]["app.kubernetes.io/version"]


def candidate(models: Models) -> dict[str, Any] | None:
    return models.child("apps/v1", "Deployment", "iris-candidate")


def test_new_version_runs_as_candidate_until_promoted(models: Models, operator: KopfRunner) -> None:
    models.create("iris", with_version("1"))
    models.wait_children("iris", kinds=SERVING)
    # The first version serves as it always does: no candidate.
    models.wait_status("iris", lambda s: s.get("observedGeneration") == 1, "generation 1")
    assert candidate(models) is None

    models.replace_spec("iris", with_version("2"))
    running = wait_for(lambda: candidate(models), 30, what="the candidate Deployment")
    models.wait_status(
        "iris", lambda s: (s.get("rollout") or {}).get("phase") == "Running", "rollout Running"
    )
    status = models.get("iris")["status"]
    # No pod answers here: the operator's read of the comparison says where it looked.
    unread = status["rollout"].pop("comparisonError", None)
    assert unread is None or ".svc:8080 did not answer" in unread
    assert status["rollout"] == {
        "mode": "shadow",
        "incumbent": "1",
        "candidate": "2",
        "candidateService": "iris-candidate",
        "phase": "Running",
        "candidateReadyReplicas": 0,
    }
    # The incumbent's Deployment keeps its version and ConfigMap; its server is given
    # the candidate's Service, to send it its share.
    assert version_of(models.child("apps/v1", "Deployment", "iris")) == "1"
    url = "iris=http://iris-candidate.{}.svc:8080".format(
        models.get("iris")["metadata"]["namespace"]
    )
    wait_for(lambda: candidate_urls(models) == [url], 30, what="the incumbent given the candidate")
    config = models.child("v1", "ConfigMap", "iris-config")
    assert "version: '1'" in config["data"]["model.yaml"]  # type: ignore[index]
    assert version_of(running) == "2"
    labels = running["spec"]["template"]["metadata"]["labels"]
    assert labels["modelyard.io/model"] == "iris-candidate"
    container = running["spec"]["template"]["spec"]["containers"][0]
    # The candidate serves the Model's V2 name, without a rollout of its own.
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/models/iris/ready"
    candidate_config = models.child("v1", "ConfigMap", "iris-candidate-config")
    declaration = candidate_config["data"]["model.yaml"]  # type: ignore[index]
    assert "name: iris" in declaration and "rollout" not in declaration
    # The Model's Service does not select the candidate's pods; its own Service does.
    service = models.child("v1", "Service", "iris")
    assert service["spec"]["selector"]["modelyard.io/model"] == "iris"  # type: ignore[index]
    own = models.child("v1", "Service", "iris-candidate")
    assert own["spec"]["selector"]["modelyard.io/model"] == "iris-candidate"  # type: ignore[index]

    models.replace_spec("iris", with_version("2", action="promote"))
    wait_for(lambda: candidate(models) is None, 30, what="the candidate to be deleted")
    wait_for(
        lambda: version_of(models.child("apps/v1", "Deployment", "iris")) == "2",
        30,
        what="the Model's Deployment to serve version 2",
    )
    # Acted on once: the action leaves the spec, and the status says what was done.
    wait_for(
        lambda: "action" not in models.get("iris")["spec"]["rollout"], 30, what="action removed"
    )
    models.wait_status(
        "iris", lambda s: (s.get("rollout") or {}).get("phase") == "Promoted", "Promoted"
    )
    assert candidate_urls(models) == []  # the promoted version sends nothing
    rollout = models.get("iris")["status"]["rollout"]
    assert (rollout["incumbent"], rollout["candidate"]) == ("1", "2")
    assert "candidateReadyReplicas" not in rollout


def test_abort_keeps_the_incumbent_until_the_version_changes(
    models: Models, operator: KopfRunner
) -> None:
    models.create("iris", with_version("1"))
    models.wait_children("iris", kinds=SERVING)
    models.replace_spec("iris", with_version("2"))
    wait_for(lambda: candidate(models), 30, what="the candidate Deployment")

    models.replace_spec("iris", with_version("2", action="abort"))
    wait_for(lambda: candidate(models) is None, 30, what="the candidate to be deleted")
    models.wait_status(
        "iris", lambda s: (s.get("rollout") or {}).get("phase") == "Aborted", "Aborted"
    )
    wait_for(
        lambda: "action" not in models.get("iris")["spec"]["rollout"], 30, what="action removed"
    )
    # Reconciled again (the action's removal is a new generation): still aborted.
    generation = models.get("iris")["metadata"]["generation"]
    models.wait_status(
        "iris", lambda s: s.get("observedGeneration") == generation, "the latest generation"
    )
    assert candidate(models) is None
    assert version_of(models.child("apps/v1", "Deployment", "iris")) == "1"
    assert models.get("iris")["status"]["rollout"]["phase"] == "Aborted"
    assert candidate_urls(models) == []  # it sends the aborted candidate nothing

    # The next version is a candidate again.
    models.replace_spec("iris", with_version("3"))
    running = wait_for(lambda: candidate(models), 30, what="a candidate for version 3")
    assert version_of(running) == "3"
    models.wait_status(
        "iris",
        lambda s: (
            (s.get("rollout") or {}).get("phase") == "Running" and s["rollout"]["candidate"] == "3"
        ),
        "rollout of version 3 Running",
    )
    assert version_of(models.child("apps/v1", "Deployment", "iris")) == "1"
    wait_for(lambda: len(candidate_urls(models)) == 1, 30, what="the incumbent sending again")


def plan_for(spec: dict[str, Any], incumbent: str | None, previous: dict[str, Any] | None) -> Plan:
    return plan(Model.from_spec("iris", "ml", spec), incumbent, previous)


def test_plan_rules() -> None:
    # No Deployment yet, or the same version: no candidate.
    assert plan_for(with_version("1"), None, None) == Plan(False, False, False, None)
    assert plan_for(with_version("1"), "1", None) == Plan(False, False, False, None)
    # Without `rollout` a new version simply rolls.
    plain = {k: v for k, v in with_version("2").items() if k != "rollout"}
    assert plan_for(plain, "1", None) == Plan(False, False, False, None)
    running = plan_for(with_version("2"), "1", None)
    assert (running.candidate, running.keep_incumbent, running.clear_action) == (True, True, False)
    assert running.status is not None and running.status["phase"] == "Running"
    # An action with nothing to act on is removed, not kept for a later version.
    assert plan_for(with_version("1", "promote"), "1", None).clear_action
    # Aborted holds for that version only; the version going back to the incumbent's
    # keeps the record; a newer version is a candidate again.
    aborted = {"phase": "Aborted", "incumbent": "1", "candidate": "2"}
    held = plan_for(with_version("2"), "1", aborted)
    assert (held.candidate, held.keep_incumbent, held.clear_action) == (False, True, False)
    assert plan_for(with_version("1"), "1", aborted).status == aborted
    assert plan_for(with_version("3"), "1", aborted).candidate
    # A Running record of a candidate no longer wanted is removed.
    assert plan_for(with_version("1"), "1", {**aborted, "phase": "Running"}).status is None
