"""`modelyard feedback load`: ground truth from a file into a model's store."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from modelyard.commands import model_store_options
from modelyard.logs import configure_logging


@click.group()
def feedback() -> None:
    """Ground truth for a model's predictions (services send it to `<name>-feedback`
    over V2)."""


@feedback.command("load")
@click.argument("name")
@click.argument("file", type=click.Path(path_type=Path))
@model_store_options
def load(name: str, file: Path, directory: Path, store: str | None) -> None:
    """Load the labels of FILE (CSV or Parquet) for model NAME (a model folder, or the
    name of a model in --dir).

    Columns: the model's entity id (e.g. user_id, for batch predictions) or request_id
    (the `id` of an online response, with an optional `row` of its batch), `label`, and
    `observed_at` (ISO 8601, UTC when no zone is given). Every row is checked before
    any is stored; loading the same file again changes nothing.
    """
    from modelyard.errors import ModelyardError
    from modelyard.quality.config import config_for
    from modelyard.quality.labels import load_file
    from modelyard.quality.tables import QualityStore

    configure_logging()
    try:
        config = config_for(name, directory, store)
        quality = QualityStore.open(config)
        try:
            result = load_file(config, file, quality)
        finally:
            quality.close()
    except ModelyardError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    click.echo(f"{file}: {result.summary()}; model '{config.model}' in {quality.describe()}")
