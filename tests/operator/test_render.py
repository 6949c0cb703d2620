"""The renderers against golden files and Kubernetes' own OpenAPI schemas.

Regenerate the golden files after a deliberate change with
`MODELYARD_UPDATE_GOLDEN=1 pytest tests/operator/test_render.py`, and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from modelyard_operator.crd import declaration_schema
from modelyard_operator.render import manifests, render_all
from modelyard_operator.render.common import CONFIG_HASH_ANNOTATION
from modelyard_operator.spec import Model, SpecError

from tests.operator.cases import CURRENT, FULL, GOLDEN, MINIMAL, V1_20

GOLDEN_DIR = Path(__file__).parent / "golden"
# The newest release kubernetes-validate knows: manifests must hold for a current cluster.
KUBERNETES_VERSION = kubernetes_validate.latest_version()
# Not part of Kubernetes' schemas; checked by the golden files only.
CRD_KINDS = {"ServiceMonitor"}


class GoldenDumper(yaml.SafeDumper):
    """Multi-line strings (the ConfigMap's model.yaml) as literal blocks, for review."""


GoldenDumper.add_representer(
    str,
    lambda dumper, value: dumper.represent_scalar(
        "tag:yaml.org,2002:str", value, style="|" if "\n" in value else None
    ),
)


def model(name: str, spec: dict[str, Any], namespace: str = "ml") -> Model:
    return Model.from_spec(name, namespace, spec)


@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_golden(case: str) -> None:
    name, spec, options = GOLDEN[case]
    rendered = yaml.dump_all(
        manifests(model(name, spec), options), Dumper=GoldenDumper, sort_keys=False
    )
    golden = GOLDEN_DIR / f"{case}.yaml"
    if os.environ.get("MODELYARD_UPDATE_GOLDEN"):
        golden.write_text(rendered)
    assert rendered == golden.read_text(), f"{golden} differs; see the module docstring"


@pytest.mark.parametrize("case", sorted(c for c, v in GOLDEN.items() if v[2] is CURRENT))
def test_manifests_validate_strictly(case: str) -> None:
    name, spec, options = GOLDEN[case]
    for manifest in manifests(model(name, spec), options):
        if manifest["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def test_optional_children_follow_the_spec() -> None:
    plain = render_all(model("iris", MINIMAL), CURRENT)
    assert [k for k, m in plain.items() if m is None] == [
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "CronJob",
    ]
    assert plain["Deployment"]["spec"]["replicas"] == 1
    full = render_all(model("gender", FULL), CURRENT)
    assert all(m is not None for m in full.values())
    # The autoscaler owns replicas; the operator never applies them.
    assert "replicas" not in full["Deployment"]["spec"]
    assert full["CronJob"]["spec"]["jobTemplate"]["spec"]["completionMode"] == "Indexed"


def test_environment_overlay() -> None:
    staging = render_all(model("gender", {**FULL, "environment": "staging"}), CURRENT)
    hpa = staging["HorizontalPodAutoscaler"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 2)
    assert staging["PodDisruptionBudget"] is None  # one pod: a budget would block drains
    # Overlay keys replace; the rest of the base stays.
    resources = staging["Deployment"]["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources["limits"] == {"memory": "32Gi", "nvidia.com/gpu": "1"}


def test_secrets_stay_out_of_the_configmap() -> None:
    rendered = render_all(model("gender", FULL), CURRENT)
    declaration = yaml.safe_load(rendered["ConfigMap"]["data"]["model.yaml"])
    assert declaration["features"]["source"] == "${FEATURES_DB_URL}"
    assert "secretEnv" not in declaration and "deployment" not in declaration
    assert declaration["model"]["uri"] == "artifacts"  # a prefix is fetched as a folder
    env = rendered["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "FEATURES_DB_URL", "valueFrom": {"secretKeyRef": {
        "name": "profiles-db", "key": "features-url"}}} in env  # fmt: skip


def test_declaration_change_rolls_the_pods() -> None:
    def config_hash(spec: dict[str, Any]) -> str:
        deployment = render_all(model("iris", spec), CURRENT)["Deployment"]
        return deployment["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]

    assert config_hash(MINIMAL) != config_hash({**MINIMAL, "version": "2"})
    # Cluster-only keys change the pod spec itself, not the declaration.
    assert config_hash(MINIMAL) == config_hash({**MINIMAL, "deployment": {"replicas": {"min": 4}}})


def test_shards_need_indexed_jobs() -> None:
    with pytest.raises(SpecError, match=r"shards needs Indexed Jobs \(Kubernetes 1.22\+\)"):
        render_all(model("gender", FULL), V1_20)


@pytest.mark.parametrize(
    ("name", "spec", "message"),
    [
        ("iris", {**MINIMAL, "model": {"uri": "model.joblib"}}, "is a local path"),
        ("iris", {"version": "1", "runtime": "sklearn"}, "runtime sklearn needs model.uri"),
        ("p", {"version": "1", "runtime": "predictor"}, "runtime predictor needs 'predictor'"),
        ("c", {"version": "1", "runtime": "custom"}, "runtime custom needs 'implementation'"),
        ("1iris", MINIMAL, "must start with a letter"),
        ("iris", {**MINIMAL, "deployment": {"replicas": {"min": 3, "max": 2}}}, "below min"),
        (
            "iris",
            {**MINIMAL, "deployment": {"autoscaling": {"metric": "cpu", "target": 50}}},
            "needs deployment.replicas.max",
        ),
        (
            "iris",
            {
                **MINIMAL,
                "deployment": {
                    "replicas": {"min": 1, "max": 3},
                    "autoscaling": {"metric": "cpu", "target": 50},
                },
            },
            "set deployment.resources.cpu",
        ),
        ("gender", {**FULL, "environment": "prod"}, r"declared: staging"),
        ("iris", {**MINIMAL, "runtime": "cobol"}, r"spec.runtime: Input should be"),
        ("x" * 47, {**FULL, "name": "g"}, "at most 46 characters"),
    ],
)
def test_invalid_specs_name_the_field_and_the_fix(
    name: str, spec: dict[str, Any], message: str
) -> None:
    with pytest.raises(SpecError, match=message) as refused:
        model(name, spec)
    assert str(refused.value).startswith(f"model '{name}': ")


@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_the_pods_declaration_is_a_valid_declaration(case: str) -> None:
    name, spec, options = GOLDEN[case]
    configmap = render_all(model(name, spec), options)["ConfigMap"]
    assert configmap is not None
    declaration = yaml.safe_load(configmap["data"]["model.yaml"])
    validator = jsonschema.Draft202012Validator(declaration_schema())
    assert [e.message for e in validator.iter_errors(declaration)] == []
