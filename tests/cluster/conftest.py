"""Fixtures of the cluster tests (`make test-cluster`): a real single-node cluster, the
chart installed with the operator running in it, a local S3 and a PostgreSQL server on
the host's bridge address. Everything is session-scoped: the tests run in file order,
each building on the state the previous one left, as an admin's session would.

`make test` does not collect these (they need root, Docker and minutes); `make
test-cluster` sets MODELYARD_CLUSTER_TESTS=1. With it set, anything missing fails loudly.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
from kubernetes import client as k8s

from tests.support.kube import wait_for
from tests.support.node import BRIDGE_CIDR, BRIDGE_IP, NodeCluster
from tests.support.postgres import PostgresServer
from tests.support.s3 import S3Server
from tests.support.server import REPO
from tests.support.wheels import PROBE_LIB, wheel_index, write_wheel

if os.environ.get("MODELYARD_CLUSTER_TESTS") != "1":
    collect_ignore_glob = ["test_*.py"]

REGISTRY = os.environ.get("REGISTRY", "ghcr.io/modelyard")
VERSION = os.environ.get("VERSION", "0.1.0")
SERVING_IMAGE = f"{REGISTRY}/modelyard:{VERSION}"
OPERATOR_IMAGE = f"{REGISTRY}/modelyard-operator:{VERSION}"
CHART = REPO / "charts" / "modelyard"
RELEASE = "modelyard"
SYSTEM_NAMESPACE = "modelyard-system"
NAMESPACE = "ml"
BUCKET = "models"
STORE_SECRET = "model-store"
# Short, so that a stalled rollout is reported within the test's patience.
PROGRESS_DEADLINE = 40

TIMINGS: dict[str, float] = {}


def timed(name: str, seconds: float) -> None:
    TIMINGS[name] = seconds
    print(f"\n[timing] {name}: {seconds:.1f} s", flush=True)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not TIMINGS:
        return
    terminalreporter.section("cluster timings")
    for name, seconds in TIMINGS.items():
        terminalreporter.write_line(f"{name:<48} {seconds:8.1f} s")


@pytest.fixture(scope="session")
def node(request: pytest.FixtureRequest) -> Iterator[NodeCluster]:
    workdir = Path(tempfile.mkdtemp(prefix="modelyard-cluster-", dir="/var/tmp"))
    cluster = NodeCluster(workdir)
    began = time.monotonic()
    cluster.up()
    timed("cluster up", time.monotonic() - began)
    for name in ("host prepared", "dockerd up", "pause image", "control plane up", "node Ready"):
        TIMINGS[f"  {name}"] = cluster.timings[name]
    missing = [
        image
        for image in (SERVING_IMAGE, OPERATOR_IMAGE)
        if not cluster.docker("images", "-q", image).strip()
    ]
    try:
        if missing:
            raise RuntimeError(
                f"images missing from the cluster's Docker: {missing}; run make images"
            )
        yield cluster
    finally:
        failed = request.session.testsfailed
        if failed:
            print(f"\n{cluster.logs(80)}\n(all logs in {workdir})")
        cluster.down()
        timed("teardown", cluster.timings["down"])
        if not failed:
            shutil.rmtree(workdir, ignore_errors=True)
        # The host's firewall rules, sysctls, links, mounts and processes are as before.
        assert not cluster.leftovers, cluster.leftovers


@pytest.fixture(scope="session")
def api(node: NodeCluster) -> k8s.ApiClient:
    return node.api_client()


@pytest.fixture(scope="session")
def s3(node: NodeCluster) -> Iterator[S3Server]:
    """moto's S3 on the host's bridge address, where the pods' init containers reach it."""
    with S3Server(host=BRIDGE_IP, log_path=node.workdir / "moto.log") as server:
        yield server


@pytest.fixture(scope="session")
def postgres(node: NodeCluster) -> Iterator[PostgresServer]:
    """PostgreSQL on the host's bridge address: reachable from the pod network only."""
    server = PostgresServer(host=BRIDGE_IP).start()
    try:
        hba = server.data_dir / "pg_hba.conf"
        hba.write_text(hba.read_text() + f"host all all {BRIDGE_CIDR} trust\n")
        server._run("pg_ctl", "-D", str(server.data_dir), "reload")
        server.create_database("predictions")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def package_index(node: NodeCluster) -> Iterator[str]:
    """A package index of one tiny wheel (PROBE_LIB) on the host's bridge address, where
    pods and a docker build on the host network reach it; its URL."""
    root = node.workdir / "package-index"
    root.mkdir()
    wheel = write_wheel(root, *PROBE_LIB)
    with wheel_index(root / "index", wheel, PROBE_LIB[0], host=BRIDGE_IP) as url:
        yield url


@pytest.fixture(scope="session")
def release(node: NodeCluster, api: k8s.ApiClient, package_index: str) -> Iterator[dict[str, Any]]:
    """The chart, installed with helm-python-sdk; its operator runs in the cluster, with
    the package index that Models building their environment install from."""
    repository, tag = OPERATOR_IMAGE.rsplit(":", 1)
    values = {
        "operator": {
            "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
            "retryDelay": 2,
        },
        "models": {
            "image": SERVING_IMAGE,
            "progressDeadlineSeconds": PROGRESS_DEADLINE,
            "environmentIndexUrl": package_index,
        },
    }
    began = time.monotonic()
    with helm.Config(kubeconfig_path=node.kubeconfig, namespace=SYSTEM_NAMESPACE) as config:
        installed = config.install(CHART, RELEASE, values, create_namespace=True, timeout=120)
        apps = k8s.AppsV1Api(api)

        def operator_available() -> bool:
            status = apps.read_namespaced_deployment(RELEASE, SYSTEM_NAMESPACE).status
            return (status.available_replicas or 0) >= 1

        wait_for(operator_available, 180, what="the operator's Deployment available", interval=0.5)
        timed("chart installed, operator pod Ready", time.monotonic() - began)
        yield installed


@pytest.fixture(scope="session")
def namespace(api: k8s.ApiClient, s3: S3Server, postgres: PostgresServer) -> str:
    """The models' namespace, with the Secret their pods read the store credentials from."""
    core = k8s.CoreV1Api(api)
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=NAMESPACE)))
    data = {**s3.env(), "PREDICTIONS_DB_URL": postgres.url("predictions")}
    core.create_namespaced_secret(
        NAMESPACE,
        k8s.V1Secret(metadata=k8s.V1ObjectMeta(name=STORE_SECRET), string_data=data),
    )
    wait_for(
        lambda: core.list_namespaced_service_account(NAMESPACE).items,
        60,
        what="the namespace's default ServiceAccount",
        interval=0.5,
    )
    return NAMESPACE
