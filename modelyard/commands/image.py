"""`modelyard image DIR --tag T`: the serving image with a model folder's environment
baked in, so its pods never build one (nor need a package index)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import click

from modelyard import environments

DEFAULT_BASE = "ghcr.io/modelyard/modelyard:0.1.0"  # the chart's models.image
# Where the image keeps environments: outside /tmp, which pods mount writable (empty).
IMAGE_ENVS_DIR = "/opt/modelyard-envs"

DOCKERFILE = """\
# The serving image with the environment of {folder}'s requirements baked in, built
# by `modelyard image`. The server finds it under the same hash (requirements, Python
# and the image's own packages), so its pods build nothing.
FROM {base}
ENV {var}={envs}
# The index the build may use (the server's choice, never the folder's): uv's own.
ARG UV_INDEX_URL=""
ARG UV_DEFAULT_INDEX=""
USER root
COPY requirements.txt {envs}/.requirements/requirements.txt
RUN modelyard envs build {envs}/.requirements/requirements.txt \\
    && rm -rf {envs}/.requirements /root/.cache/uv
USER 1000
"""


def docker_works() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    return subprocess.run([docker, "info"], capture_output=True, check=False).returncode == 0


@click.command()
@click.argument("folder", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--tag", "-t", required=True, help="The image's tag, e.g. registry/churn:1.")
@click.option(
    "--base", default=DEFAULT_BASE, show_default=True,
    help="The serving image to build from (images/serving/Dockerfile).",
)  # fmt: skip
@click.option(
    "--context", type=click.Path(path_type=Path), default=None,
    help="Where to write the Dockerfile and its context [default: build/image-<folder>].",
)  # fmt: skip
@click.option(
    "--build-arg", "build_args", multiple=True, metavar="KEY=VALUE",
    help="A docker build argument, e.g. UV_INDEX_URL=https://pypi.internal/simple (the "
    "index the build installs from; never one from the folder). Repeatable.",
)  # fmt: skip
@click.option(
    "--network", default=None,
    help="The network of the build's steps (docker build --network), e.g. host to reach "
    "an index on this machine's loopback.",
)  # fmt: skip
@click.option("--no-build", is_flag=True, help="Write the Dockerfile only.")
def image(
    folder: Path,
    tag: str,
    base: str,
    context: Path | None,
    build_args: tuple[str, ...],
    network: str | None,
    no_build: bool,
) -> None:
    """Write (and where Docker runs, build) an image FROM the serving image with
    FOLDER's requirements.txt environment baked in; a Model takes it as spec.image."""
    requirements = environments.folder_requirements(folder)
    if requirements is None:
        raise click.ClickException(
            f"{folder} has no requirements.txt and declares no python.requirements: the "
            "serving image serves it as it is"
        )
    try:
        environments.check_requirements(requirements)
    except environments.EnvironmentBuildError as e:
        raise click.ClickException(str(e)) from None
    context = context or Path("build") / f"image-{folder.resolve().name}"
    context.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(requirements, context / "requirements.txt")
    (context / "Dockerfile").write_text(
        DOCKERFILE.format(
            folder=folder.resolve().name,
            base=base,
            var=environments.ENVS_DIR_VAR,
            envs=IMAGE_ENVS_DIR,
        )
    )
    click.echo(f"wrote {context / 'Dockerfile'}")
    command = ["docker", "build", "-t", tag]
    for arg in build_args:
        if "=" not in arg:
            raise click.BadParameter(f"{arg!r} is not KEY=VALUE", param_hint="--build-arg")
        command += ["--build-arg", arg]
    if network:
        command += ["--network", network]
    command.append(str(context))
    if no_build:
        click.echo("build it with:\n  " + " ".join(command))
        return
    if not docker_works():
        click.echo(
            "docker is not available here (no docker, or no daemon); build it where it is:\n  "
            + " ".join(command)
        )
        return
    done = subprocess.run(command, check=False)
    if done.returncode:
        raise click.ClickException(f"docker build failed (exit {done.returncode})")
    click.echo(f"built {tag}; serve FOLDER with it: a Model's spec.image: {tag}")
