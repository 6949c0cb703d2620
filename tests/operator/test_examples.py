"""The example Model resources of examples/*/k8s/, as a platform admin applies them.

Each renders manifests that hold for a current Kubernetes, applies to the real API
server and reconciles; and the pod it describes serves: its folder, packed as the
examples image packs it and unpacked as the storage initializer unpacks it, with the
ConfigMap's files mounted over it, answers its example request through a real
`modelyard serve`.
"""

from __future__ import annotations

import copy
import json
import re
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import requests
import yaml
from kubernetes.dynamic import DynamicClient
from modelyard_operator.render import manifests
from modelyard_operator.render.config import render_configmap
from modelyard_operator.spec import OPERATOR_KEYS, Model

from modelyard.declarations.folders import settings_dict
from tests.operator.cases import CURRENT, V1_20
from tests.operator.conftest import Models
from tests.support.kube import KubeCluster
from tests.support.server import REPO, ServerProcess

EXAMPLES = sorted(REPO.glob("examples/*/k8s/*.yaml"))
ARTIFACTS = REPO / "examples" / "artifacts.yaml"
EXAMPLES_DOCKERFILE = REPO / "images" / "examples" / "Dockerfile"
ARCHIVE_URL = re.compile(r"^http://modelyard-examples/(?P<archive>[a-z-]+)\.tar\.gz$")
KUBERNETES_VERSION = kubernetes_validate.latest_version()


def example_models() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in EXAMPLES:
        for body in yaml.safe_load_all(path.read_text()):
            if body and body["kind"] == "Model":
                found[body["metadata"]["name"]] = body
    return found


def packed_folders() -> dict[str, Path]:
    """Archive name -> the folder the examples image packs into it (its COPY lines)."""
    copies = re.findall(r"^COPY (\S+)/ (\S+)/$", EXAMPLES_DOCKERFILE.read_text(), re.M)
    return {archive: REPO / source for source, archive in copies}


def archive_of(body: dict[str, Any]) -> str:
    match = ARCHIVE_URL.match(body["spec"]["folder"])
    assert match, f"{body['metadata']['name']}: folder should be an examples archive URL"
    return match["archive"]


def test_every_example_is_packed_and_has_a_resource() -> None:
    models = example_models()
    assert sorted(models) == ["breast-cancer", "gender", "iris", "sentiment"]
    assert sorted(archive_of(b) for b in models.values()) == sorted(packed_folders())


@pytest.mark.parametrize("name", ["iris", "gender"])
def test_a_declared_example_is_its_declaration_on_a_cluster(name: str) -> None:
    """The resource is the folder's model.yaml, plus where the folder is and how it runs."""
    body = example_models()[name]
    declaration = yaml.safe_load((packed_folders()[archive_of(body)] / "model.yaml").read_text())
    on_cluster = {k: v for k, v in body["spec"].items() if k not in (*OPERATOR_KEYS, "deployment")}
    assert on_cluster == {k: v for k, v in declaration.items() if k != "name"}, (
        f"the {name} example's resource differs from its folder's model.yaml: copy the change"
    )
    assert declaration["name"] == name


@pytest.mark.parametrize("name", sorted(example_models()))
def test_example_manifests_validate_strictly(name: str) -> None:
    for manifest in manifests(Model.from_body(example_models()[name]), CURRENT):
        if manifest["kind"] != "ServiceMonitor":
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def test_the_artifacts_server_validates_strictly() -> None:
    for manifest in yaml.safe_load_all(ARTIFACTS.read_text()):
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def test_examples_apply_and_reconcile(
    models: Models, run_operator: Callable[[], Any], kube_cluster: KubeCluster
) -> None:
    dynamic = DynamicClient(kube_cluster.client)
    for manifest in yaml.safe_load_all(ARTIFACTS.read_text()):
        resource = dynamic.resources.get(api_version=manifest["apiVersion"], kind=manifest["kind"])
        resource.create(body=manifest, namespace=models.namespace)
    bodies = example_models()
    expected = {
        name: {
            (m["apiVersion"], m["kind"], m["metadata"]["name"])
            for m in manifests(Model.from_body(body), V1_20)
        }
        for name, body in bodies.items()
    }
    with run_operator():
        began = time.monotonic()
        for body in bodies.values():
            models.api.create_namespaced_custom_object(
                "modelyard.io", "v1alpha1", models.namespace, "models", body
            )
        for name, kinds in expected.items():
            models.wait_children(name, kinds={(v, k, n.replace(name, "{}")) for v, k, n in kinds})
        took = time.monotonic() - began
        for name, kinds in expected.items():
            count = len(kinds)
            models.wait_status(
                name,
                lambda s, count=count: len(s.get("children", [])) == count,  # type: ignore[misc]
                f"status.children of {name}",
            )
    print(f"\n{len(bodies)} example Models applied -> all children present in {took:.2f}s")
    statuses = {name: models.get(name)["status"]["phase"] for name in bodies}
    assert statuses == dict.fromkeys(bodies, "Pending")  # no kubelet here: pods never run
    assert ("batch/v1beta1", "CronJob", "gender-batch") in expected["gender"]


def unpack_like_the_pod(body: dict[str, Any], models_dir: Path, workdir: Path) -> Path:
    """The pod's model folder: the examples image's archive, unpacked as the storage
    initializer unpacks it, with the ConfigMap's files mounted over what came with it."""
    model = Model.from_body(body)
    source = packed_folders()[archive_of(body)]
    archive = workdir / f"{archive_of(body)}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:  # tar -czf A -C FOLDER .
        for path in sorted(source.iterdir()):
            if path.name != "k8s":
                tar.add(path, arcname=f"./{path.name}")
    folder = models_dir / model.model_name
    folder.mkdir(parents=True)
    with tarfile.open(archive, "r") as tar:
        tar.extractall(folder, filter="data")
    for key, text in render_configmap(model, CURRENT)["data"].items():
        (folder / key).write_text(text)
    return folder


def test_example_pods_serve_their_examples(tmp_path: Path, serve_dir: Callable) -> None:
    models_dir = tmp_path / "models"
    bodies = example_models()
    # A version that cannot load (its artifact is not the one declared), for the probes.
    broken = copy.deepcopy(bodies["iris"])
    broken["metadata"]["name"] = "iris-tampered"
    broken["spec"]["model"]["sha256"] = "0" * 64
    unpack_like_the_pod(broken, models_dir, tmp_path)
    for body in bodies.values():
        folder = unpack_like_the_pod(body, models_dir, tmp_path)
        # What the server loads is the ConfigMap's model-settings.json, generated from
        # its model.yaml (which wins over any model-settings.json that came along).
        marker, loaded = settings_dict(folder)
        assert marker.name == "model.yaml"
        assert loaded == json.loads((folder / "model-settings.json").read_text())
    server: ServerProcess = serve_dir(models_dir, "--no-watch", "--processes", "1")
    answers = {}
    for name, body in bodies.items():
        response = requests.post(
            f"{server.base}/v2/models/{name}/infer", json=body["spec"]["example"], timeout=30
        )
        assert response.status_code == 200, response.text
        answers[name] = {o["name"]: o["data"] for o in response.json()["outputs"]}
    assert answers["iris"]["predict"] == [0]
    assert answers["breast-cancer"]["predict"] == [0]
    assert answers["gender"]["missing"] == [False, True]
    assert answers["sentiment"]  # a label and a score

    def probes(body: dict[str, Any]) -> dict[str, int]:
        deployment = manifests(Model.from_body(body), CURRENT)[1]
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        return {
            probe: requests.get(
                server.base + container[probe]["httpGet"]["path"], timeout=5
            ).status_code
            for probe in ("startupProbe", "livenessProbe", "readinessProbe")
        }

    for body in bodies.values():
        assert probes(body) == dict.fromkeys(
            ("startupProbe", "livenessProbe", "readinessProbe"), 200
        )
    # The server has started and lives, but a pod of the tampered version is never ready.
    assert probes(broken) == {"startupProbe": 200, "livenessProbe": 200, "readinessProbe": 404}
