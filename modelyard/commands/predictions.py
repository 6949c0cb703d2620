"""`modelyard predictions export`: a run's stored predictions as Parquet or CSV."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from modelyard.logs import configure_logging


@click.group()
def predictions() -> None:
    """A model's stored batch predictions."""


@predictions.command("export")
@click.argument("name")
@click.option(
    "--run",
    "run_id",
    default="latest",
    show_default=True,
    help="The run to export: its id, or latest (the latest complete run).",
)
@click.option(
    "--format", "fmt", type=click.Choice(["parquet", "csv"]), default="parquet", show_default=True
)
@click.option(
    "--out",
    required=True,
    help="A folder or file, local or an fsspec URI (s3://bucket/prefix/, gs://...).",
)
@click.option(
    "--where",
    multiple=True,
    metavar="EXPR",
    help='Keep rows where COLUMN OP VALUE, e.g. "male_percentile > 0.8"; repeat '
    "for several (all must hold).",
)
@click.option(
    "--store",
    envvar="PREDICTIONS_DB_URL",
    show_envvar=True,
    help="The store's SQLAlchemy URL (default: the model folder's predictions.store).",
)
@click.option("--version", help="Only runs of this model version.")
def export(
    name: str,
    run_id: str,
    fmt: str,
    out: str,
    where: tuple[str, ...],
    store: str | None,
    version: str | None,
) -> None:
    """Write the predictions of NAME's run to OUT. NAME is a model's name (with --store)
    or its folder (whose declaration names the store)."""
    from modelyard.errors import ModelyardError
    from modelyard.store.connection import PredictionStore
    from modelyard.store.export import Filter, export_run

    configure_logging(False)
    try:
        filters = [Filter.parse(w) for w in where]
        folder = Path(".")
        if Path(name).exists():
            from modelyard.batch.run import BatchJob

            job = BatchJob(Path(name))
            name, folder, store = job.spec.model, job.folder, store or job.store_url
        if not store:
            raise click.UsageError("give --store (or $PREDICTIONS_DB_URL), or NAME as a folder")
        opened = PredictionStore.open(store, folder, writer=False)
        try:
            if run_id == "latest":
                run = opened.ledger.latest_run(name, version)
            else:
                found = [
                    r
                    for r in opened.ledger.runs_of(name)
                    if r.run_id == run_id and version in (None, r.version)
                ]
                run = found[0] if found else None
            if run is None:
                raise click.ClickException(
                    f"model '{name}' has no {'complete ' if run_id == 'latest' else ''}run "
                    f"{run_id} in {opened.describe()}; run `modelyard batch run` first"
                )
            done = export_run(opened, run, out, fmt, filters)
        finally:
            opened.close()
    except ModelyardError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    click.echo(
        f"model '{run.model}' version {run.version} run {run.run_id}: {done.rows:,} rows "
        f"to {done.path}"
    )
