"""`modelyard render`: the Kubernetes manifests the operator would apply for a model.

The same pure renderers as the operator, so what this prints is what a cluster gets
(less the owner reference to the Model, which needs the live resource's uid).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import yaml

from modelyard.commands.validate import EXIT_INVALID, report

if TYPE_CHECKING:
    from modelyard_operator.spec import Model

FOLDER_HINT = "pass --folder-uri with the URI the model folder was uploaded to"


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the ConfigMap's files) as literal blocks, as kubectl shows them."""


_Dumper.add_representer(
    str,
    lambda dumper, value: dumper.represent_scalar(
        "tag:yaml.org,2002:str", value, style="|" if "\n" in value else None
    ),
)


def dump(documents: list[dict[str, Any]]) -> str:
    return yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False, allow_unicode=True)


def model_resources(path: Path) -> Iterator[dict[str, Any]]:
    """The Model resources of a YAML file (other kinds, e.g. a Secret, are skipped)."""
    from modelyard_operator.crd import GROUP, KIND

    for document in yaml.safe_load_all(path.read_text()):
        if (
            isinstance(document, dict)
            and document.get("kind") == KIND
            and str(document.get("apiVersion", "")).startswith(f"{GROUP}/")
        ):
            yield document


def declared_models(
    directory: Path,
    namespace: str,
    environment: str | None,
    folder_uri: str | None,
    image: str | None,
) -> list[dict[str, Any]]:
    """A Model resource for each declaration in DIRECTORY (a model folder or a folder of
    them); exits with every problem listed when one is invalid."""
    from modelyard_operator.crd import GROUP, KIND, VERSION

    from modelyard.declarations.folders import find_model_folders
    from modelyard.declarations.load import (
        DECLARATION_FILENAME,
        declaration_problems,
        read_declaration,
    )

    folders = [f for f in find_model_folders(directory) if (f / DECLARATION_FILENAME).is_file()]
    if not folders:
        raise click.UsageError(
            f"no {DECLARATION_FILENAME} in {directory} or its folders; the operator runs "
            "declarations (`modelyard new` makes a model folder with one)"
        )
    problems = [p for f in folders for p in declaration_problems(f / DECLARATION_FILENAME)]
    if problems:
        report(problems)
        sys.exit(EXIT_INVALID)
    single = folders == [directory]
    resources = []
    for folder in folders:
        spec = read_declaration(folder / DECLARATION_FILENAME)
        if environment is not None:
            spec["environment"] = environment
        if folder_uri is not None:
            # A folder of model folders was uploaded as one: each model is below it.
            base = folder_uri.rstrip("/")
            spec["folder"] = f"{base}/" if single else f"{base}/{folder.name}/"
        if image is not None:
            spec["image"] = image
        metadata = {"name": spec["name"], "namespace": namespace}
        resources.append(
            {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": metadata, "spec": spec}
        )
    return resources


def parse(resource: dict[str, Any], hint: str | None) -> Model:
    from modelyard_operator.spec import Model, SpecError

    try:
        return Model.from_body(resource)
    except SpecError as e:
        message = str(e)
        if hint and "folder:" in message:
            message += f" (modelyard render: {hint})"
        click.echo(f"error: {message}", err=True)
        sys.exit(EXIT_INVALID)


@click.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--env",
    "environment",
    metavar="E",
    help="The deployment.environments overlay to apply (e.g. staging).",
)
@click.option(
    "--folder-uri",
    metavar="URI",
    help="Where the model folder was uploaded (s3://bucket/iris/, or an https URL of a "
    ".tar.gz of it): the pod fetches it, so paths in model.yaml resolve as here. For a "
    "folder of model folders, each is expected at URI/<folder name>/.",
)
@click.option("--namespace", "-n", default="default", show_default=True)
@click.option("--image", help="The serving image (default: the operator's).")
@click.option(
    "--kubernetes-version",
    metavar="1.MINOR",
    help="Render the API versions this Kubernetes release serves (default: current ones: "
    "autoscaling/v2, batch/v1, policy/v1).",
)
@click.option(
    "--service-monitor", is_flag=True, help="The cluster has the Prometheus Operator's CRDs."
)
@click.option(
    "--resource",
    is_flag=True,
    help="Print the Model resource itself (for kubectl apply) instead of its children.",
)
def render(
    path: Path,
    environment: str | None,
    folder_uri: str | None,
    namespace: str,
    image: str | None,
    kubernetes_version: str | None,
    service_monitor: bool,
    resource: bool,
) -> None:
    """Print, as multi-document YAML, what the operator applies for PATH's models.

    PATH is a model folder with a model.yaml, a folder of model folders, or a file of
    Model resources (what `kubectl apply -f` would take). A model.uri or other path
    inside the model folder needs --folder-uri: on a cluster the pod fetches the folder.
    Exits 2 when a model is invalid or cannot run on a cluster, naming what to change.
    """
    from modelyard_operator.render import ApiVersions, RenderOptions, manifests
    from modelyard_operator.spec import SpecError

    if path.is_file():
        if folder_uri or environment or image:
            raise click.UsageError(
                "--env, --folder-uri and --image apply to model folders; "
                "a Model resource says them in its spec"
            )
        resources = list(model_resources(path))
        if not resources:
            raise click.UsageError(f"{path} holds no Model resource (kind: Model)")
        for body in resources:
            body.setdefault("metadata", {}).setdefault("namespace", namespace)
        hint = None
    else:
        resources = declared_models(path, namespace, environment, folder_uri, image)
        hint = None if folder_uri else FOLDER_HINT
    api = ApiVersions(service_monitor=service_monitor)
    if kubernetes_version is not None:
        major, _, minor = kubernetes_version.partition(".")
        if major != "1" or not minor.isdigit():
            raise click.BadParameter(
                f"{kubernetes_version!r} is not 1.MINOR (e.g. 1.29)",
                param_hint="--kubernetes-version",
            )
        api = ApiVersions.for_kubernetes(int(minor), service_monitor=service_monitor)
    options = RenderOptions(api=api)
    documents: list[dict[str, Any]] = []
    for body in resources:
        model = parse(body, hint)
        if resource:
            documents.append(body)
            continue
        try:
            documents += manifests(model, options)
        except SpecError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(EXIT_INVALID)
    click.echo(dump(documents), nl=False)
