"""The operator, run by kopf in the test process, against the real API server."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import pytest
from kopf.testing import KopfRunner
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from modelyard_operator.crd import GROUP, PLURAL, VERSION
from modelyard_operator.kube import FIELD_MANAGER

from tests.operator.cases import FULL, MINIMAL
from tests.operator.conftest import Models
from tests.support.kube import KubeCluster, mark_pods_ready, wait_for

# v1.20 has no Indexed Jobs: the operator refuses shards there (see test_render).
SCHEDULED = {**FULL, "predictions": {**FULL["predictions"], "shards": 1}}


def owner_uids(obj: dict[str, Any]) -> set[str]:
    return {ref["uid"] for ref in obj["metadata"].get("ownerReferences") or []}


def test_model_gets_every_child(models: Models, run_operator: Callable[[], Any]) -> None:
    # Timings print after the operator stops: click's runner owns sys.stdout meanwhile.
    with run_operator():
        began = time.monotonic()
        created = models.create("gender", SCHEDULED)
        children = models.wait_children("gender")
        took = time.monotonic() - began
        models.wait_status(
            "gender",
            lambda s: s.get("observedGeneration") == 1 and len(s.get("children", [])) == 7,
            "status.children",
        )
    print(f"\nModel applied -> all {len(children)} children present in {took:.2f}s")

    assert all(owner_uids(c) == {created["metadata"]["uid"]} for c in children.values())
    deployment = children["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == SCHEDULED["image"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"]["cloud.google.com/gke-accelerator"] == "nvidia-tesla-t4"
    hpa = children["HorizontalPodAutoscaler"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 10)
    assert children["CronJob"]["spec"]["schedule"] == "0 3 * * *"
    status = models.get("gender")["status"]
    assert status["phase"] == "Pending"
    assert status["conditions"][0]["reason"] in ("DeploymentProgressing", "DeploymentMissing")


def test_admin_token_and_network_policy_follow_the_model(
    models: Models, operator: KopfRunner
) -> None:
    spec = {
        **MINIMAL,
        "adminTokenSecret": {"secret": "iris-admin", "key": "token"},
        "networkPolicy": {
            "from": [{"namespaceSelector": {"matchLabels": {"team": "shop"}}}],
            "monitoringNamespace": "observability",
        },
    }
    models.create("iris", spec)
    kinds = {("apps/v1", "Deployment", "{}"), ("networking.k8s.io/v1", "NetworkPolicy", "{}")}
    children = models.wait_children("iris", kinds=kinds)
    container = children["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert "--admin-token-file" in container["command"]
    volumes = children["Deployment"]["spec"]["template"]["spec"]["volumes"]
    assert {"secretName": "iris-admin", "items": [{"key": "token", "path": "token"}],
            "defaultMode": 0o440} in [v.get("secret") for v in volumes]  # fmt: skip
    # No CPU or memory in the Model: the operator's defaults, never an unbounded pod.
    assert container["resources"]["requests"] == {"cpu": "500m", "memory": "1Gi"}
    assert container["resources"]["limits"] == {"memory": "1Gi"}
    ingress = children["NetworkPolicy"]["spec"]["ingress"]
    assert ingress[0]["from"] == [{"namespaceSelector": {"matchLabels": {"team": "shop"}}}]
    assert [p["port"] for p in ingress[0]["ports"]] == [8080, 8081]
    monitoring = ingress[1]["from"][0]["namespaceSelector"]["matchLabels"]
    assert monitoring == {"kubernetes.io/metadata.name": "observability"}
    assert [p["port"] for p in ingress[1]["ports"]] == [8082]

    models.replace_spec("iris", {**MINIMAL, "networkPolicy": {"enabled": False}})
    wait_for(
        lambda: models.child("networking.k8s.io/v1", "NetworkPolicy", "iris") is None,
        30,
        what="the NetworkPolicy to be removed",
    )

    def token_gone() -> bool:
        deployment = models.child("apps/v1", "Deployment", "iris")
        command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]  # type: ignore[index]
        return "--admin-token-file" not in command

    wait_for(token_gone, 30, what="the admin token to leave the Deployment")


def test_children_follow_spec_changes(models: Models, operator: KopfRunner) -> None:
    models.create("gender", SCHEDULED)
    models.wait_children("gender")

    spec = copy.deepcopy(SCHEDULED)
    spec["deployment"]["replicas"] = {"min": 2, "max": 4}
    spec["deployment"]["resources"]["memory"] = "16Gi"
    spec["predictions"]["schedule"] = "30 1 * * *"
    models.replace_spec("gender", spec)

    def followed() -> bool:
        children = models.children("gender")
        hpa, cron, deployment = (
            children["HorizontalPodAutoscaler"],
            children["CronJob"],
            children["Deployment"],
        )
        container = deployment["spec"]["template"]["spec"]["containers"][0]  # type: ignore[index]
        return (
            hpa["spec"]["maxReplicas"] == 4  # type: ignore[index]
            and cron["spec"]["schedule"] == "30 1 * * *"  # type: ignore[index]
            and container["resources"]["requests"]["memory"] == "16Gi"
        )

    wait_for(followed, 30, what="children to follow the new spec")

    del spec["deployment"]["autoscaling"]
    del spec["predictions"]["schedule"]
    models.replace_spec("gender", spec)

    def removed() -> bool:
        children = models.children("gender")
        return children["HorizontalPodAutoscaler"] is None and children["CronJob"] is None

    wait_for(removed, 30, what="the HPA and CronJob to be removed")
    # Without an autoscaler the operator sets replicas itself.
    wait_for(
        lambda: models.children("gender")["Deployment"]["spec"]["replicas"] == 2,  # type: ignore[index]
        what="Deployment replicas to be the spec's min",
    )


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({**MINIMAL, "runtime": "cobol"}, "spec.runtime"),
        ({"runtime": "sklearn", "model": {"uri": "s3://m/a.joblib"}}, "spec.version"),
        ({**MINIMAL, "deployment": {"replicas": {"min": -1}}}, "spec.deployment.replicas.min"),
        # A rule across fields, from the declaration schema's allOf (v1.20 does not say
        # which branch failed).
        ({"version": "1", "runtime": "predictor"}, "must validate all the schemas (allOf)"),
    ],
)
def test_api_server_refuses_invalid_models(
    models: Models, spec: dict[str, Any], field: str
) -> None:
    with pytest.raises(ApiException) as refused:
        models.create("bad", spec)
    assert refused.value.status == 422
    assert field in refused.value.body


def test_model_the_operator_cannot_run_is_marked_failed(
    models: Models, operator: KopfRunner, kube_cluster: KubeCluster
) -> None:
    # Valid for the schema, but a path in a model folder the Model does not locate.
    models.create("iris", {**MINIMAL, "model": {"uri": "model.joblib"}})
    models.wait_status("iris", lambda s: s.get("phase") == "Failed", "phase Failed")
    condition = models.get("iris")["status"]["conditions"][0]
    assert (condition["status"], condition["reason"]) == ("False", "InvalidSpec")
    assert "is a path in the model folder" in condition["message"]
    core = k8s.CoreV1Api(kube_cluster.client)

    def warnings() -> list[k8s.CoreV1Event]:
        events = core.list_namespaced_event(models.namespace).items
        return [e for e in events if e.reason == "InvalidSpec"]

    wait_for(warnings, what="an InvalidSpec Event")
    time.sleep(2)  # the only way to see that nothing happens: no retry loop
    assert sum(e.count or 1 for e in warnings()) == 1
    assert models.children("iris")["Deployment"] is None

    # Fixing the spec recovers.
    models.replace_spec("iris", MINIMAL)
    wait_for(lambda: models.child("apps/v1", "Deployment", "iris"), what="the Deployment")
    models.wait_status("iris", lambda s: s.get("phase") == "Pending", "phase Pending")


def test_restarted_operator_changes_nothing(
    models: Models, run_operator: Callable[[], Any], caplog: pytest.LogCaptureFixture
) -> None:
    with run_operator():
        models.create("gender", SCHEDULED)
        models.wait_children("gender")
        models.wait_status("gender", lambda s: "children" in s, "status.children")

    def fingerprint() -> dict[str, Any]:
        # The Deployment's status moves with its controller; what the operator owns is
        # its generation and the time of its last applied change.
        out: dict[str, Any] = {}
        for kind, obj in models.children("gender").items():
            assert obj is not None
            mine = [m for m in obj["metadata"]["managedFields"] if m["manager"] == FIELD_MANAGER]
            out[kind] = (obj["metadata"].get("generation"), [m["time"] for m in mine])
            if kind != "Deployment":
                out[kind] += (obj["metadata"]["resourceVersion"],)
        return out

    before = fingerprint()
    caplog.clear()
    with run_operator():
        wait_for(
            lambda: any(
                "Resuming is processed: 1 succeeded" in r.getMessage() for r in caplog.records
            ),
            what="the resumed reconcile",
        )
    assert fingerprint() == before


def test_model_reports_ready_when_its_pods_are(
    models: Models, operator: KopfRunner, kube_cluster: KubeCluster
) -> None:
    spec = {**MINIMAL, "deployment": {"replicas": {"min": 2}}}
    models.create("iris", spec)
    selector = "modelyard.io/model=iris,app.kubernetes.io/component=server"
    core = k8s.CoreV1Api(kube_cluster.client)
    wait_for(
        lambda: len(core.list_namespaced_pod(models.namespace, label_selector=selector).items) == 2,
        what="two Pods",
    )
    models.wait_status("iris", lambda s: s.get("phase") == "Pending", "phase Pending")
    mark_pods_ready(kube_cluster.client, models.namespace, selector)
    models.wait_status(
        "iris", lambda s: s.get("phase") == "Ready" and s.get("readyReplicas") == 2, "Ready"
    )
    condition = models.get("iris")["status"]["conditions"][0]
    assert (condition["status"], condition["reason"]) == ("True", "DeploymentReady")


def test_reconcile_of_many_models(models: Models, run_operator: Callable[[], Any]) -> None:
    count = 100

    def reconciled() -> bool:
        items = models.api.list_namespaced_custom_object(GROUP, VERSION, models.namespace, PLURAL)
        done = [m for m in items["items"] if len((m.get("status") or {}).get("children", [])) == 7]
        return len(done) == count

    with run_operator():
        began = time.monotonic()
        for i in range(count):
            models.create(f"m{i:03d}", SCHEDULED)
        wait_for(reconciled, timeout=240, interval=0.5, what=f"{count} Models reconciled")
        took = time.monotonic() - began
    print(f"\n{count} Models reconciled (every child applied, status written) in {took:.1f}s")


def test_deleting_the_model_collects_its_children(models: Models, operator: KopfRunner) -> None:
    models.create("gender", SCHEDULED)
    models.wait_children("gender")
    models.delete("gender")
    # The garbage collector learns new kinds by rediscovery every 30 s: the first
    # deletion after the CRD appeared can wait that long. (Last in the module for that.)
    wait_for(
        lambda: not any(models.children("gender").values()),
        timeout=60,
        what="every child to be garbage-collected",
    )
