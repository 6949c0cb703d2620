from __future__ import annotations

import sys
from pathlib import Path

import click

from modelyard.errors import InvalidModelFolder, Problem

EXIT_INVALID = 2


def file_problems(path: Path) -> list[Problem]:
    """Every problem of one declaration (.yaml) or model-settings (.json) file."""
    if path.suffix == ".json":
        from modelyard.declarations.folders import read_model_settings_json
        from modelyard.declarations.validate import check_model_settings

        try:
            return check_model_settings(read_model_settings_json(path), path)
        except InvalidModelFolder as e:
            return e.problems
    from modelyard.declarations.load import declaration_problems

    return declaration_problems(path)


def artifact_problems(file: Path) -> list[Problem]:
    """The model's artifact, read once by its runtime: a damaged file is a problem."""
    import asyncio

    from modelyard.declarations.folders import load_model_folder
    from modelyard.serving.artifacts import check_readable

    try:
        settings = load_model_folder(file.parent)
    except InvalidModelFolder as e:
        return e.problems
    error = asyncio.run(check_readable(settings))
    pointer = "/parameters/uri" if file.suffix == ".json" else "/model/uri"
    return [Problem(str(file), pointer, error)] if error else []


def query_problems(file: Path) -> list[Problem]:
    """A declaration's features query, run with LIMIT 0 against its source and held
    to the model's input."""
    if file.suffix == ".json":
        return []
    from modelyard.declarations.features_query import features_query_problems

    return features_query_problems(file)


def targets(path: Path) -> list[Path] | Problem:
    """The files to check for a PATH argument: the file itself, a model folder's
    marker file, or those of every model folder in a directory."""
    if path.is_file():
        return [path]
    from modelyard.declarations.folders import find_model_folders, marker_file

    folders = find_model_folders(path)
    if not folders:
        return Problem(
            str(path), "", "no model folders here: a model folder holds a model.yaml or a "
            "model-settings.json (`modelyard new` makes one)",
        )  # fmt: skip
    return [marker_file(f) for f in folders]


def report(problems: list[Problem]) -> None:
    for problem in problems:
        click.echo(str(problem))


def summary(checked: int, invalid: int, problems: int) -> str:
    files = f"{checked} file{'s' if checked != 1 else ''}"
    if not invalid:
        return f"{files} checked: all valid"
    return (
        f"{files} checked: {checked - invalid} valid, {invalid} invalid "
        f"({problems} problem{'s' if problems != 1 else ''})"
    )


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
def validate(paths: tuple[Path, ...]) -> None:
    """Check model folders before anything runs: every problem at once.

    PATHS are model.yaml or model-settings.json files, model folders, or folders of
    model folders (such as model-settings/). Each problem is printed as
    `file: /json/pointer: message`. A declaration's features.sql is run against its
    source with LIMIT 0 and its columns held to the model's input (count and type).
    Exits 0 when everything is valid, 2 otherwise.
    """
    checked = invalid = total = 0
    for path in paths:
        found = targets(path)
        if isinstance(found, Problem):
            report([found])
            checked, invalid, total = checked + 1, invalid + 1, total + 1
            continue
        for file in found:
            problems = file_problems(file) or artifact_problems(file) or query_problems(file)
            checked += 1
            if problems:
                invalid += 1
                total += len(problems)
                report(problems)
            else:
                click.echo(f"{file}: valid")
    click.echo(summary(checked, invalid, total))
    sys.exit(EXIT_INVALID if invalid else 0)
