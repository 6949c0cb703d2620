from __future__ import annotations

import sys
from pathlib import Path

import click

from modelyard.commands.validate import EXIT_INVALID, report, summary


@click.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write into OUT/<folder name>/ (paths rewritten to still resolve) "
    "instead of next to each model.yaml.",
)
def build(directory: Path, out: Path | None) -> None:
    """Generate MLServer's model-settings.json and settings.json from every model.yaml.

    DIRECTORY is a model folder or a folder of model folders. Nothing is written
    unless every declaration is valid; `${VAR}` placeholders are kept as written.
    """
    from modelyard.declarations.folders import find_model_folders
    from modelyard.declarations.load import (
        DECLARATION_FILENAME,
        declaration_problems,
        read_declaration,
    )
    from modelyard.declarations.settings import build as build_folder
    from modelyard.declarations.settings import unrelocatable

    folders = [f for f in find_model_folders(directory) if (f / DECLARATION_FILENAME).is_file()]
    if not folders:
        raise click.UsageError(
            f"no {DECLARATION_FILENAME} in {directory} or its folders; "
            "`modelyard new` makes a model folder with one"
        )
    problems = {f: declaration_problems(f / DECLARATION_FILENAME) for f in folders}
    if out is not None:
        for folder, found in problems.items():
            if not found:
                found += unrelocatable(read_declaration(folder / DECLARATION_FILENAME), folder)
    invalid = [p for found in problems.values() for p in found]
    if invalid:
        report(invalid)
        click.echo(
            summary(len(folders), sum(1 for f in problems.values() if f), len(invalid))
            + "; nothing written"
        )
        sys.exit(EXIT_INVALID)
    for folder in folders:
        for path in build_folder(folder, out):
            click.echo(f"wrote {path}")
