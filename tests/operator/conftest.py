"""A Model CRD on the session's API server, Model resources of a test's namespace, and
the operator run by kopf in the test process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from kopf.testing import KopfRunner
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from modelyard_operator.crd import GROUP, PLURAL, VERSION, crd

from tests.support.kube import KubeCluster, create_crd, wait_for

# Every child of a scheduled, autoscaled Model with two replicas or more, at the API
# versions of the test API server (Kubernetes 1.20).
CHILDREN = {
    ("v1", "ConfigMap", "{}-config"),
    ("apps/v1", "Deployment", "{}"),
    ("v1", "Service", "{}"),
    ("autoscaling/v2beta2", "HorizontalPodAutoscaler", "{}"),
    ("policy/v1beta1", "PodDisruptionBudget", "{}"),
    ("batch/v1beta1", "CronJob", "{}-batch"),
    ("networking.k8s.io/v1", "NetworkPolicy", "{}"),
}


@pytest.fixture(scope="session")
def model_crd(kube_cluster: KubeCluster) -> dict[str, Any]:
    definition = crd()
    create_crd(kube_cluster.client, definition)
    return definition


class Models:
    """Model resources of one namespace, through the official client."""

    def __init__(self, cluster: KubeCluster, namespace: str) -> None:
        self.api = k8s.CustomObjectsApi(cluster.client)
        self.namespace = namespace
        self.dynamic = DynamicClient(cluster.client)

    def create(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Model", "metadata": {"name": name}}
        return self.api.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, {**body, "spec": spec}
        )

    def get(self, name: str) -> dict[str, Any]:
        return self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def replace_spec(self, name: str, spec: dict[str, Any]) -> None:
        """As `kubectl replace` would; the operator writes status meanwhile, so retry."""
        for _ in range(10):
            body = self.get(name)
            body["spec"] = spec
            try:
                self.api.replace_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, name, body
                )
                return
            except ApiException as exc:
                if exc.status != 409:
                    raise
        raise AssertionError(f"Model {name} kept changing; could not replace its spec")

    def delete(self, name: str) -> None:
        self.api.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def child(self, api_version: str, kind: str, name: str) -> dict[str, Any] | None:
        resource = self.dynamic.resources.get(api_version=api_version, kind=kind)
        try:
            return resource.get(name=name, namespace=self.namespace).to_dict()
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def children(
        self, name: str, kinds: set[tuple[str, str, str]] = CHILDREN
    ) -> dict[str, dict[str, Any] | None]:
        return {
            kind: self.child(api_version, kind, pattern.format(name))
            for api_version, kind, pattern in kinds
        }

    def wait_children(
        self, name: str, timeout: float = 30, kinds: set[tuple[str, str, str]] = CHILDREN
    ) -> dict[str, dict[str, Any]]:
        def present() -> dict[str, dict[str, Any]] | None:
            found = self.children(name, kinds)
            return found if all(found.values()) else None  # type: ignore[return-value]

        return wait_for(present, timeout, what=f"every child of Model {name}")

    def wait_status(self, name: str, check: Callable[[dict[str, Any]], bool], what: str) -> None:
        wait_for(lambda: check(self.get(name).get("status") or {}), 30, what=what)


@pytest.fixture
def models(kube_cluster: KubeCluster, kube_namespace: str, model_crd: dict[str, Any]) -> Models:
    return Models(kube_cluster, kube_namespace)


@pytest.fixture
def run_operator(
    kube_cluster: KubeCluster, kube_namespace: str, monkeypatch: pytest.MonkeyPatch
) -> Callable[[], Any]:
    monkeypatch.setenv("KUBECONFIG", str(kube_cluster.kubeconfig))

    @contextmanager
    def run() -> Iterator[KopfRunner]:
        args = ["run", "--standalone", "--namespace", kube_namespace]
        args += ["-m", "modelyard_operator.handlers"]
        with KopfRunner(args, timeout=30) as runner:
            yield runner
        assert runner.exit_code == 0, runner.output
        assert runner.exception is None

    return run


@pytest.fixture
def operator(run_operator: Callable[[], Any]) -> Iterator[KopfRunner]:
    with run_operator() as runner:
        yield runner
