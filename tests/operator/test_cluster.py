"""The test control plane is a real Kubernetes API server, with the behaviour the operator
relies on: structural CRD schemas, server-side apply, garbage collection, status
subresources, and a kopf operator logged in through the kubeconfig."""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

import kopf
import pytest
from kopf.testing import KopfRunner
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient

from tests.support.kube import KubeCluster, create_crd, mark_pods_ready, wait_for


def widget_crd(kind: str, spec_schema: dict[str, Any]) -> dict[str, Any]:
    """A namespaced CRD with a unique group, so tests sharing the cluster never collide."""
    group = f"t{secrets.token_hex(4)}.test.modelyard.io"
    plural = kind.lower() + "s"
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": spec_schema,
                                # kopf keeps its own bookkeeping in status.
                                "status": {
                                    "type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                },
                            },
                        }
                    },
                }
            ],
        },
    }


def deployment(name: str, replicas: int = 1, **metadata: Any) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels, **metadata},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "main", "image": "example.invalid/none:1"}]},
            },
        },
    }


def test_version_and_startup(kube_cluster: KubeCluster) -> None:
    version = k8s.VersionApi(kube_cluster.client).get_code()
    assert (version.major, version.minor, version.git_version) == ("1", "20", "v1.20.2")
    print(f"\ncontrol plane ready in {kube_cluster.startup_seconds:.1f}s")


def test_crd_structural_schema_validates_and_defaults(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    schema = {
        "type": "object",
        "required": ["replicas"],
        "properties": {
            "replicas": {"type": "integer", "minimum": 1},
            "runtime": {"type": "string", "enum": ["sklearn", "xgboost"], "default": "sklearn"},
        },
    }
    crd = widget_crd("Widget", schema)
    create_crd(kube_cluster.client, crd)
    group = crd["spec"]["group"]
    custom = k8s.CustomObjectsApi(kube_cluster.client)

    def create(spec: dict[str, Any], name: str) -> dict[str, Any]:
        body = {"apiVersion": f"{group}/v1", "kind": "Widget", "metadata": {"name": name}}
        return custom.create_namespaced_custom_object(
            group, "v1", kube_namespace, "widgets", {**body, "spec": spec}
        )

    with pytest.raises(ApiException) as refused:
        create({"replicas": 0, "runtime": "cobol"}, "bad")
    assert refused.value.status == 422
    # Every violation is reported, each at its field path.
    assert "spec.replicas" in refused.value.body
    assert "spec.runtime" in refused.value.body

    created = create({"replicas": 2, "unknown": True}, "good")
    assert created["spec"] == {"replicas": 2, "runtime": "sklearn"}  # defaulted and pruned


def test_server_side_apply_records_field_managers(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    dynamic = DynamicClient(kube_cluster.client)
    configmaps = dynamic.resources.get(api_version="v1", kind="ConfigMap")
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "settings", "namespace": kube_namespace},
        "data": {"model-settings.json": "{}"},
    }
    applied = configmaps.server_side_apply(body=body, field_manager="modelyard-test").to_dict()
    managers = {(m["manager"], m["operation"]) for m in applied["metadata"]["managedFields"]}
    assert managers == {("modelyard-test", "Apply")}

    # Another manager claiming the same field conflicts unless it forces ownership.
    other = {**body, "data": {"model-settings.json": '{"name": "x"}'}}
    with pytest.raises(ApiException) as conflict:
        configmaps.server_side_apply(body=other, field_manager="someone-else")
    assert conflict.value.status == 409
    forced = configmaps.server_side_apply(
        body=other, field_manager="someone-else", force_conflicts=True
    ).to_dict()
    assert forced["data"] == other["data"]


def test_owner_references_are_garbage_collected(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    core = k8s.CoreV1Api(kube_cluster.client)
    apps = k8s.AppsV1Api(kube_cluster.client)
    owner = core.create_namespaced_config_map(
        kube_namespace, {"metadata": {"name": "owner"}, "data": {"k": "v"}}
    )
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    apps.create_namespaced_deployment(kube_namespace, deployment("child", ownerReferences=[ref]))
    # The deployment controller is running: it creates the ReplicaSet.
    wait_for(
        lambda: apps.list_namespaced_replica_set(kube_namespace).items,
        what="the Deployment's ReplicaSet",
    )

    core.delete_namespaced_config_map("owner", kube_namespace)

    def gone() -> bool:
        return not apps.list_namespaced_deployment(kube_namespace).items

    wait_for(gone, timeout=60, what="the owned Deployment to be garbage-collected")


def test_status_subresource_and_ready_pods(kube_cluster: KubeCluster, kube_namespace: str) -> None:
    apps = k8s.AppsV1Api(kube_cluster.client)
    created = apps.create_namespaced_deployment(kube_namespace, deployment("web", replicas=2))

    # The status endpoint changes status only: spec in the body is ignored, and the
    # generation (which only spec changes bump) stays.
    body = {"spec": {"replicas": 5}, "status": {"observedGeneration": 1, "replicas": 2}}
    patched = apps.patch_namespaced_deployment_status("web", kube_namespace, body)
    assert patched.status.replicas == 2
    assert patched.spec.replicas == 2
    assert patched.metadata.generation == created.metadata.generation

    # Pods stay Pending with no kubelet; reporting them Ready makes the controllers
    # count them, as on a real node.
    selector = "app.kubernetes.io/name=web"
    core = k8s.CoreV1Api(kube_cluster.client)
    wait_for(
        lambda: len(core.list_namespaced_pod(kube_namespace, label_selector=selector).items) == 2,
        what="two Pods from the ReplicaSet",
    )
    assert mark_pods_ready(kube_cluster.client, kube_namespace, selector) == 2
    wait_for(
        lambda: apps.read_namespaced_deployment("web", kube_namespace).status.ready_replicas == 2,
        what="the Deployment to report 2 ready replicas",
    )


def test_kopf_operator_logs_in_through_the_kubeconfig(
    kube_cluster: KubeCluster, kube_namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    crd = widget_crd("Probe", {"type": "object", "properties": {"message": {"type": "string"}}})
    create_crd(kube_cluster.client, crd)
    group = crd["spec"]["group"]

    # A registry of its own keeps these handlers away from the operator's (kopf makes a
    # runner's registry the default, so the default is restored afterwards). Its login is
    # the operator's: a service account in a cluster, else $KUBECONFIG read at login
    # time (kopf's default, the official client's, froze $KUBECONFIG at import).
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.create(group, "v1", "probes", registry=registry)
    def echo(spec: kopf.Spec, body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        patch.status["echo"] = spec["message"]
        kopf.info(body, reason="Echoed", message=spec["message"])

    monkeypatch.setenv("KUBECONFIG", str(kube_cluster.kubeconfig))
    previous_registry = kopf.get_default_registry()
    try:
        reacted = run_probe(kube_cluster, kube_namespace, registry, group)
    finally:
        kopf.set_default_registry(previous_registry)
    print(f"\nkopf reacted in {reacted:.1f}s")


def run_probe(
    kube_cluster: KubeCluster, namespace: str, registry: kopf.OperatorRegistry, group: str
) -> float:
    """Run the probe operator until it has echoed one object; the seconds that took."""
    settings = kopf.OperatorSettings()
    settings.posting.level = logging.INFO
    custom = k8s.CustomObjectsApi(kube_cluster.client)
    args = ["run", "--standalone", "--namespace", namespace, "--verbose"]
    began = time.monotonic()
    with KopfRunner(args, registry=registry, settings=settings, timeout=30) as runner:
        body = {
            "apiVersion": f"{group}/v1",
            "kind": "Probe",
            "metadata": {"name": "hello"},
            "spec": {"message": "hi there"},
        }
        custom.create_namespaced_custom_object(group, "v1", namespace, "probes", body)

        def echoed() -> bool:
            probe = custom.get_namespaced_custom_object(group, "v1", namespace, "probes", "hello")
            return probe.get("status", {}).get("echo") == "hi there"

        wait_for(echoed, timeout=30, what="the kopf handler to write status.echo")
        reacted = time.monotonic() - began
        events = k8s.CoreV1Api(kube_cluster.client).list_namespaced_event(namespace).items
        assert any(e.reason == "Echoed" and e.message == "hi there" for e in events)

    assert runner.exit_code == 0, runner.output
    assert runner.exception is None
    return reacted
