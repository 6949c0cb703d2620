"""`modelyard render PATH`: exactly the manifests the operator applies, from the same
renderers, for a model folder, a folder of them, or a file of Model resources."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml
from modelyard_operator.render import ApiVersions, RenderOptions, manifests
from modelyard_operator.spec import Model

from modelyard.commands.render import dump
from tests.support.declarations import base, model_folder, run_cli
from tests.support.server import copy_model

KUBERNETES_VERSION = kubernetes_validate.latest_version()


def documents(text: str) -> list[dict[str, Any]]:
    return list(yaml.safe_load_all(text))


def test_a_folder_renders_what_the_operator_applies(tmp_path: Path) -> None:
    folder = model_folder(tmp_path / "scorer")
    result = run_cli("render", str(folder), "--folder-uri", "s3://models/scorer", "-n", "ml")
    assert result.returncode == 0, result.stderr
    spec = {**base(), "folder": "s3://models/scorer/"}
    expected = manifests(Model.from_spec("scorer", "ml", spec), RenderOptions())
    assert result.stdout == dump(expected)
    kinds = [m["kind"] for m in documents(result.stdout)]
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "CronJob",
        "NetworkPolicy",
    ]
    for manifest in documents(result.stdout):
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def test_a_path_in_the_folder_needs_its_uri(tmp_path: Path) -> None:
    iris = copy_model("iris", tmp_path / "models")
    result = run_cli("render", str(iris))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("error: model 'iris': model.uri 'model.joblib' is a path")
    assert "pass --folder-uri" in result.stderr


def test_a_folder_of_folders_is_expected_below_the_uri(tmp_path: Path) -> None:
    root = tmp_path / "models"
    copy_model("iris", root)
    model_folder(root / "scorer")
    result = run_cli("render", str(root), "--folder-uri", "gs://b/team/", "--resource")
    assert result.returncode == 0, result.stderr
    resources = documents(result.stdout)
    assert [(r["kind"], r["metadata"]["name"], r["spec"]["folder"]) for r in resources] == [
        ("Model", "iris", "gs://b/team/iris/"),
        ("Model", "scorer", "gs://b/team/scorer/"),
    ]


def test_the_resource_renders_as_its_folder_does(tmp_path: Path) -> None:
    folder = model_folder(tmp_path / "scorer")
    args = ("--folder-uri", "s3://m/scorer/", "--env", "production")
    resource = run_cli("render", str(folder), *args, "--resource")
    assert resource.returncode == 0, resource.stderr
    (tmp_path / "scorer.yaml").write_text(resource.stdout)
    from_file = run_cli("render", str(tmp_path / "scorer.yaml"))
    assert from_file.returncode == 0, from_file.stderr
    assert from_file.stdout == run_cli("render", str(folder), *args).stdout
    hpa = next(m for m in documents(from_file.stdout) if m["kind"] == "HorizontalPodAutoscaler")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 10)


def test_api_versions_of_an_older_cluster(tmp_path: Path) -> None:
    declaration = {**base(), "predictions": {**base()["predictions"], "shards": 1}}
    folder = model_folder(tmp_path / "scorer", declaration)
    result = run_cli(
        "render", str(folder), "--folder-uri", "s3://m/s/", "--kubernetes-version", "1.20"
    )
    assert result.returncode == 0, result.stderr
    versions = {m["kind"]: m["apiVersion"] for m in documents(result.stdout)}
    legacy = ApiVersions.for_kubernetes(20)
    assert (versions["HorizontalPodAutoscaler"], versions["CronJob"]) == (
        legacy.hpa,
        legacy.cronjob,
    )
    assert legacy == ApiVersions(
        hpa="autoscaling/v2beta2", cronjob="batch/v1beta1", pdb="policy/v1beta1", indexed_jobs=False
    )
    # Shards need Indexed Jobs, which 1.20 lacks.
    sharded = run_cli(
        "render", str(model_folder(tmp_path / "sharded")), "--folder-uri", "s3://m/s/",
        "--kubernetes-version", "1.20",
    )  # fmt: skip
    assert sharded.returncode == 2
    assert "needs Indexed Jobs" in sharded.stderr


def test_an_invalid_declaration_lists_every_problem(tmp_path: Path) -> None:
    declaration = {**base(), "version": 2, "runtime": "cobol"}
    result = run_cli("render", str(model_folder(tmp_path / "scorer", declaration)))
    assert result.returncode == 2
    assert "/version" in result.stdout and "/runtime" in result.stdout


def test_a_file_without_models_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret.yaml").write_text("apiVersion: v1\nkind: Secret\nmetadata: {name: x}\n")
    result = run_cli("render", str(tmp_path / "secret.yaml"))
    assert result.returncode == 2
    assert "holds no Model resource" in result.stderr
