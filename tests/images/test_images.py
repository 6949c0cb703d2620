"""What can be checked of the images without building them: hadolint passes, each final
stage runs as the user the pods run as, on python:3.11-slim unless told otherwise, and
the operator image installs everything the operator imports. `make images` builds them
and `make test-cluster` runs them (tests/cluster/)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from modelyard_operator.render.common import RUN_USER
from packaging.requirements import Requirement

from tests.support.server import REPO

IMAGES = REPO / "images"
DOCKERFILES = sorted(IMAGES.glob("*/Dockerfile"))
HADOLINT = Path(sys.executable).parent / "hadolint"
OPERATOR_REQUIREMENTS = IMAGES / "operator" / "requirements.txt"
# The images the pods run (not the base they are built on).
IMAGES_OF_PODS = [d for d in DOCKERFILES if d.parent.name != "base"]


def pyproject_dependencies() -> dict[str, Requirement]:
    """The project's requirements, its extras' included (the operator's MLflow client is
    the mlflow extra's)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = [r for reqs in project["optional-dependencies"].values() for r in reqs]
    found = [r for r in map(Requirement, extras) if r.name != "modelyard"]
    found += map(Requirement, project["dependencies"])
    return {r.name.lower(): r for r in found}


def requirements(path: Path) -> list[Requirement]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def final_stage(dockerfile: Path) -> str:
    return re.split(r"^FROM ", dockerfile.read_text(), flags=re.M)[-1]


def test_every_image_has_a_dockerfile() -> None:
    # base: the Python base built from Debian's packages where no registry is reachable.
    assert [d.parent.name for d in DOCKERFILES] == ["base", "examples", "operator", "serving"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda d: d.parent.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    result = subprocess.run(
        [str(HADOLINT), "--format", "json", str(dockerfile)], capture_output=True, text=True
    )
    assert result.returncode == 0, json.dumps(json.loads(result.stdout or "[]"), indent=1)


@pytest.mark.parametrize("dockerfile", IMAGES_OF_PODS, ids=lambda d: d.parent.name)
def test_the_final_stage_runs_as_the_pods_user_without_build_tools(dockerfile: Path) -> None:
    stage = final_stage(dockerfile)
    # python:3.11-slim unless the build names another base (scripts/images/build.sh).
    assert "ARG BASE_IMAGE=python:3.11-slim-bookworm\n" in dockerfile.read_text()
    assert stage.startswith("${BASE_IMAGE}\n")
    assert f"USER {RUN_USER}:{RUN_USER}" in stage
    # Everything is built in an earlier stage and copied over.
    assert not re.search(r"\b(apt-get|pip install|gcc|build-essential)\b", stage)


def test_the_serving_image_installs_pyprojects_cpu_torch() -> None:
    dockerfile = (IMAGES / "serving" / "Dockerfile").read_text()
    pinned = re.search(r'"torch==([^"]+)"', dockerfile)
    assert pinned is not None
    # torch comes with the huggingface extra, which the image installs with the others.
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    huggingface = {
        r.name: r for r in map(Requirement, extras["optional-dependencies"]["huggingface"])
    }
    assert str(huggingface["torch"].specifier) == f"=={pinned[1]}"
    installed = re.search(r'"/src\[([a-z,]+)\]"', dockerfile)
    assert installed is not None
    runtimes = {"lightgbm", "catboost", "mlflow", "onnx", "huggingface"}
    assert runtimes <= set(installed[1].split(","))


def test_the_operator_images_requirements_match_pyproject() -> None:
    project = pyproject_dependencies()
    for requirement in requirements(OPERATOR_REQUIREMENTS):
        assert requirement.name.lower() in project, f"{requirement} is not in pyproject.toml"
        assert requirement.specifier == project[requirement.name.lower()].specifier


def installed_closure(roots: list[Requirement]) -> set[str]:
    """Distributions that installing `roots` brings, as installed here."""
    seen: set[str] = set()
    todo = [r.name.lower() for r in roots]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for text in metadata.requires(name) or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name.lower())
    return {n.replace("_", "-") for n in seen}


# The operator, started where only `allowed` distributions are installed: any other
# import fails as it would in the image (optional imports then take their fallback).
IN_THE_IMAGE = """
import json, sys
from importlib import metadata

allowed = set(json.loads(sys.argv[1]))
names = metadata.packages_distributions()


# A None in sys.modules fails its import as a missing module would, and makes
# importlib.util.find_spec answer None (as optional imports such as mlflow's check).
for top, dists in names.items():
    if not {d.lower().replace("_", "-") for d in dists} & allowed:
        sys.modules[top] = None

from modelyard_operator import handlers, crd
from modelyard_operator.render import RenderOptions, manifests
from modelyard_operator.spec import Model

spec = {"version": "1", "runtime": "sklearn", "model": {"uri": "s3://b/iris/model.joblib"}}
# What resolving a Model's registry URI imports (modelyard.serving.registry_uris.resolve).
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
print(len(manifests(Model.from_spec("iris", "ml", spec), RenderOptions())), len(crd.render()))
"""


def test_the_operator_image_installs_what_the_operator_imports() -> None:
    installed = installed_closure(requirements(OPERATOR_REQUIREMENTS))
    # modelyard itself is installed from the source tree, without its dependencies.
    allowed = json.dumps(sorted(installed | {"modelyard"}))
    result = subprocess.run(
        [sys.executable, "-c", IN_THE_IMAGE, allowed], capture_output=True, text=True
    )
    assert result.returncode == 0, (
        f"add what is missing to {OPERATOR_REQUIREMENTS.relative_to(REPO)}:\n{result.stderr}"
    )
    # The model runtimes stay out of the operator image.
    assert not installed & {"torch", "transformers", "xgboost", "scikit-learn"}
