"""Fixtures shared across test packages (PostgreSQL, ...) are registered here."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator

import pytest
from kubernetes import client as k8s

from tests.support.kube import KubeCluster, ensure_binaries
from tests.support.postgres import PostgresServer


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session; tests make their own databases
    with ``postgres.create_database(name)``."""
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    """A real etcd + kube-apiserver + kube-controller-manager for the session.

    `kube_cluster.kubeconfig` is an admin kubeconfig; `kube_cluster.client` an ApiClient.
    The binaries are built on first use (about 4 minutes) and cached outside the repository.
    """
    with KubeCluster(tmp_path_factory.mktemp("kube"), bin_dir=ensure_binaries()) as cluster:
        yield cluster


@pytest.fixture
def kube_namespace(request: pytest.FixtureRequest, kube_cluster: KubeCluster) -> Iterator[str]:
    """A fresh namespace named after the test, deleted afterwards."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")
    name = f"{slug[:50].rstrip('-')}-{secrets.token_hex(3)}"
    core = k8s.CoreV1Api(kube_cluster.client)
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    yield name
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(f"\n{kube_cluster.logs(tail=30)}")
    # The namespace controller deletes its contents in the background.
    core.delete_namespace(name)
