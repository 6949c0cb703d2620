"""A Model named by an MLflow registry alias, reconciled by the operator against the real
API server and a real ``mlflow server``: the alias's version is pinned in status and
rendered into the pods' settings, a moved alias rolls the pod template from one pinned
version to the next, and an alias that names nothing keeps the pin (or, with nothing
pinned yet, or no tracking server answering, renders no Deployment)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import yaml
from kopf.testing import KopfRunner
from kubernetes import client as k8s
from mlflow.tracking import MlflowClient
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from tests.operator.conftest import Models
from tests.support.kube import KubeCluster, wait_for
from tests.support.mlflow_server import mlflow_server, point_alias, register
from tests.support.server import free_port

X, Y = load_iris(return_X_y=True)
NAME = "cluster-churn"


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as url:
        yield url


def spec(tracking: str, alias: str) -> dict[str, Any]:
    return {
        "version": "1",
        "runtime": "mlflow",
        "model": {"uri": f"models:/{NAME}@{alias}"},
        "mlflow": {"trackingUri": tracking, "pollSeconds": 1},
    }


def pod_template(models: Models, name: str) -> dict[str, Any]:
    deployment = models.child("apps/v1", "Deployment", name)
    assert deployment is not None
    return deployment["spec"]["template"]  # type: ignore[no-any-return]


def served_uri(models: Models, name: str) -> str:
    config = models.child("v1", "ConfigMap", f"{name}-config")
    assert config is not None
    return str(yaml.safe_load(config["data"]["model.yaml"])["model"]["uri"])


def events(kube_cluster: KubeCluster, namespace: str, reason: str) -> list[str]:
    found = k8s.CoreV1Api(kube_cluster.client).list_namespaced_event(namespace).items
    return [e.message for e in found if e.reason == reason]


def test_an_alias_is_pinned_rolled_and_held(
    tracking: str, models: Models, operator: KopfRunner, kube_cluster: KubeCluster
) -> None:
    v1 = register(tracking, LogisticRegression(max_iter=1000).fit(X, Y), X, Y, NAME)
    v2 = register(
        tracking, LogisticRegression(max_iter=1000).fit(X, np.choose(Y, [1, 0, 2])), X, Y, NAME
    )
    point_alias(tracking, NAME, v1)

    models.create("churn", spec(tracking, "champion"))
    models.wait_status(
        "churn", lambda s: (s.get("registry") or {}).get("version") == v1, "registry version 1"
    )
    registry = models.get("churn")["status"]["registry"]
    assert registry["pinned"] == f"models:/{NAME}/{v1}"
    assert registry["uri"] == f"models:/{NAME}@champion"
    assert registry["trackingUri"] == tracking
    wait_for(lambda: models.child("apps/v1", "Deployment", "churn"), what="the Deployment")
    # The pods are given the pinned version, never the alias, and the tracking server.
    assert served_uri(models, "churn") == f"models:/{NAME}/{v1}"
    before = pod_template(models, "churn")
    env = {e["name"]: e.get("value") for e in before["spec"]["containers"][0]["env"]}
    assert env["MLFLOW_TRACKING_URI"] == tracking

    # The alias moves: the timer pins version 2 and the pod template changes with it.
    point_alias(tracking, NAME, v2)
    models.wait_status(
        "churn", lambda s: (s.get("registry") or {}).get("version") == v2, "registry version 2"
    )
    wait_for(
        lambda: served_uri(models, "churn") == f"models:/{NAME}/{v2}", what="version 2 rendered"
    )
    after = pod_template(models, "churn")
    assert after["metadata"]["annotations"] != before["metadata"]["annotations"]
    moved = wait_for(
        lambda: events(kube_cluster, models.namespace, "RegistryMoved"),
        what="a RegistryMoved Event",
    )
    assert f"from version {v1} to version {v2}" in moved[0]

    # The alias names nothing any more: the pin and the pods stay, an Event says why.
    MlflowClient(tracking).delete_registered_model_alias(NAME, "champion")
    models.wait_status(
        "churn", lambda s: bool((s.get("registry") or {}).get("error")), "registry.error"
    )
    registry = models.get("churn")["status"]["registry"]
    assert registry["pinned"] == f"models:/{NAME}/{v2}"
    assert "champion" in registry["error"] and "stays pinned" in registry["error"]
    unresolved = wait_for(
        lambda: events(kube_cluster, models.namespace, "RegistryUnresolved"),
        what="a RegistryUnresolved Event",
    )
    assert f"models:/{NAME}@champion" in unresolved[0]
    assert pod_template(models, "churn") == after
    assert served_uri(models, "churn") == f"models:/{NAME}/{v2}"


def test_an_alias_naming_nothing_renders_no_deployment(
    tracking: str, models: Models, operator: KopfRunner, kube_cluster: KubeCluster
) -> None:
    models.create("nowhere", spec(tracking, "nowhere"))
    models.wait_status("nowhere", lambda s: s.get("phase") == "Failed", "phase Failed")
    condition = models.get("nowhere")["status"]["conditions"][0]
    assert condition["reason"] == "RegistryUnresolved"
    assert f"models:/{NAME}@nowhere" in condition["message"]
    assert "nothing is served yet" in condition["message"]
    assert models.child("apps/v1", "Deployment", "nowhere") is None
    assert models.child("v1", "ConfigMap", "nowhere-config") is None

    # A tracking server nobody answers at fails at once (MLflow's own retries would take
    # minutes): Failed within the status wait, naming the server, with nothing rendered.
    unreachable = f"http://127.0.0.1:{free_port()}"
    models.create("unreachable", {**spec(unreachable, "champion")})
    models.wait_status("unreachable", lambda s: s.get("phase") == "Failed", "phase Failed")
    condition = models.get("unreachable")["status"]["conditions"][0]
    assert condition["reason"] == "RegistryUnresolved"
    assert unreachable in condition["message"]
    assert models.child("apps/v1", "Deployment", "unreachable") is None
