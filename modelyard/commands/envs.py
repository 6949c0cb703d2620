"""`modelyard envs`: the environments built for model folders' requirements."""

from __future__ import annotations

import os
import time
from pathlib import Path

import click

from modelyard import environments
from modelyard.declarations.folders import find_model_folders
from modelyard.errors import InvalidModelFolder


def _hashes(directories: tuple[Path, ...]) -> dict[str, list[str]]:
    """Each environment hash the folders of ``directories`` use, and those folders."""
    used: dict[str, list[str]] = {}
    for directory in directories:
        for folder in find_model_folders(directory) if directory.is_dir() else []:
            try:
                digest = environments.folder_hash(folder)
            except (InvalidModelFolder, environments.EnvironmentBuildError) as e:
                raise click.ClickException(
                    f"{folder}: {e}; fix it first, so that its environment is not pruned"
                ) from None
            if digest:
                used.setdefault(digest, []).append(str(folder))
    return used


@click.group()
@click.option(
    "--envs-dir", type=click.Path(path_type=Path), envvar=environments.ENVS_DIR_VAR,
    help=f"Where environments are kept [default: ~/.cache/modelyard/envs, or "
    f"${environments.ENVS_DIR_VAR}].",
)  # fmt: skip
def envs(envs_dir: Path | None) -> None:
    """The Python environments built for model folders' requirements.txt."""
    if envs_dir is not None:
        os.environ[environments.ENVS_DIR_VAR] = str(envs_dir)


@envs.command("list")
@click.argument("directories", nargs=-1, type=click.Path(path_type=Path))
def list_(directories: tuple[Path, ...]) -> None:
    """Each environment: hash, size, last use, requirements, and (given DIRECTORIES of
    model folders) the folders using it."""
    used = _hashes(directories)
    found = environments.installed_envs()
    if not found:
        click.echo(f"no environments in {environments.envs_dir()}")
    for env in found:
        meta = env.meta()
        idle = (time.time() - env.last_used()) / 86400
        lines = [r for r in str(meta.get("requirements", "")).splitlines() if r.strip()]
        click.echo(
            f"{env.hash}  {env.size() / 1e6:7.1f} MB  used {idle:.1f} days ago  "
            f"{', '.join(lines) or '-'}"
        )
        for folder in used.get(env.hash, []):
            click.echo(f"    {folder}")


@envs.command()
@click.argument("directories", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--older-than-days", type=float,
    help="Without DIRECTORIES: remove the environments unused for this many days.",
)  # fmt: skip
def prune(directories: tuple[Path, ...], older_than_days: float | None) -> None:
    """Remove the environments no model folder of DIRECTORIES uses, or (with
    --older-than-days) those unused for that long; says which and why."""
    if not directories and older_than_days is None:
        raise click.UsageError(
            "name the DIRECTORIES whose folders' environments to keep, or give --older-than-days N"
        )
    keep = set(_hashes(directories)) if directories else None
    removed = environments.prune(keep, older_than_days)
    for env, why in removed:
        click.echo(f"removed {env.hash}: {why}")
    click.echo(f"{len(removed)} environment(s) removed from {environments.envs_dir()}")


@envs.command()
@click.argument("folder", type=click.Path(path_type=Path, exists=True))
def build(folder: Path) -> None:
    """Build FOLDER's environment now (as serving it would), and print its path; FOLDER
    may be a requirements file itself (an image's build does so)."""
    requirements = folder if folder.is_file() else environments.folder_requirements(folder)
    if requirements is None:
        raise click.ClickException(
            f"{folder} has no requirements.txt and declares no python.requirements"
        )
    try:
        env = environments.build(requirements, label=str(folder))
    except environments.EnvironmentBuildError as e:
        raise click.ClickException(str(e)) from None
    click.echo(env.path)
