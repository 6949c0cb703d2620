"""`modelyard metrics`: a model's quality against ground truth, over time."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

import click

from modelyard.commands import model_store_options
from modelyard.logs import configure_logging


@click.command()
@click.argument("name")
@model_store_options
@click.option(
    "--since", type=click.DateTime(), help="Only windows starting on or after this day (UTC)."
)
@click.option("--version", "version", help="Only this model version.")
@click.option(
    "--window", "kind", type=click.Choice(["day", "week"]), default="week", show_default=True,
    help="Days or weeks (from Monday) of when the labels were observed, in UTC.",
)  # fmt: skip
@click.option("--per-class", is_flag=True, help="Classifiers: a table per class too.")
@click.option("--plot", type=click.Path(path_type=Path), help="Write a PNG of the metrics.")
@click.option("--html", type=click.Path(path_type=Path), help="Write a self-contained HTML report.")
def metrics(
    name: str,
    directory: Path,
    store: str | None,
    since: datetime | None,
    version: str | None,
    kind: str,
    per_class: bool,
    plot: Path | None,
    html: Path | None,
) -> None:
    """Quality of model NAME (a model folder, or the name of a model in --dir) against
    its labels: accuracy, precision, recall, F1 and ROC AUC for a classifier, MAE and
    RMSE for a regressor, per version and window.

    Windows whose labels, runs or logged requests changed are recomputed first, as the
    server does for its Prometheus gauges, so both show the same numbers.
    """
    from datetime import UTC

    from rich.console import Console

    from modelyard.errors import ModelyardError
    from modelyard.quality import report
    from modelyard.quality.config import config_for
    from modelyard.quality.evaluate import Evaluator
    from modelyard.quality.tables import QualityStore

    configure_logging()
    console = Console()
    try:
        config = config_for(name, directory, store)
        task = config.require_task()
        quality = QualityStore.open(config)
        try:
            evaluator = Evaluator(config, quality)
            evaluator.refresh()
            frame = evaluator.stored(
                version, kind, since.replace(tzinfo=UTC) if since is not None else None
            )
        finally:
            quality.close()
    except ModelyardError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    if frame.empty:
        click.echo(
            f"model '{config.model}': no labelled predictions yet in {quality.describe()}; "
            f"load labels with `modelyard feedback load {name} FILE` (or send them to "
            f"'{config.model}-feedback' over V2) after a batch run or logged requests"
        )
        sys.exit(1)
    title = f"model '{config.model}' per {kind} (UTC)"
    console.print(report.rich_table(frame, task, kind, title))
    if per_class and task == "classification":
        console.print(report.rich_class_table(frame, kind, f"{title}, per class"))
    if plot is not None:
        report.write(plot, report.plot(frame, task, kind, config.model))
        click.echo(f"wrote {plot}")
    if html is not None:
        report.write(html, report.html_report(frame, task, kind, config.model, quality.describe()))
        click.echo(f"wrote {html}")
