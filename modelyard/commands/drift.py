"""`modelyard drift`: how far what a model sees is from its reference sample."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from modelyard.commands import model_store_options
from modelyard.logs import configure_logging


@click.command()
@click.argument("name")
@model_store_options
@click.option("--version", "version", help="This model version (default: the declared one).")
@click.option(
    "--window", default="day", show_default=True,
    help="Logged requests of today (day, UTC), this week (week, from Monday) or the last N "
    "(last:1000).",
)  # fmt: skip
@click.option("--plot", type=click.Path(path_type=Path), help="Write a PNG of the top features.")
@click.option("--html", type=click.Path(path_type=Path), help="Write a self-contained HTML report.")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON records instead.")
def drift(
    name: str,
    directory: Path,
    store: str | None,
    version: str | None,
    window: str,
    plot: Path | None,
    html: Path | None,
    as_json: bool,
) -> None:
    """Drift of model NAME (a model folder, or the name of a model in --dir) from its
    monitoring.reference: PSI, Kolmogorov-Smirnov (numeric) or chi-squared (categorical)
    and the share of missing values per feature, over the logged requests of --window
    and the latest batch run (against the reference and the run before), ranked by PSI.
    """
    from rich.console import Console

    from modelyard.errors import ModelyardError
    from modelyard.quality import drift as statistics
    from modelyard.quality import drift_report
    from modelyard.quality.config import config_for
    from modelyard.quality.tables import QualityStore

    configure_logging()
    currents: statistics.Currents = {}
    try:
        config = config_for(name, directory, store)
        reference = statistics.reference_of(config)
        windows = [statistics.parse_window(window)]
        quality = QualityStore.open(config, writer=False)
        try:
            frame = statistics.drift(config, quality, windows, version, currents)
        finally:
            quality.close()
    except ModelyardError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    if frame.empty:
        click.echo(
            f"model '{config.model}': nothing to compare with {config.reference} yet in "
            f"{quality.describe()}: no logged requests ({window}) carrying its columns "
            f"({', '.join(reference.features)}) and no batch run with a sample; declare "
            "monitoring.payload_sample_rate, send requests or run `modelyard batch`"
        )
        sys.exit(1)
    if as_json:
        import json

        records = frame.astype(object).where(frame.notna(), None).to_dict("records")
        click.echo(json.dumps(records))
    else:
        title = f"model '{config.model}': drift from {config.reference} ({reference.rows:,} rows)"
        Console(width=200).print(drift_report.rich_table(frame, title))
    if plot is not None:
        drift_report.write(plot, drift_report.picture(frame, reference.features, currents,
                                                      config.model))  # fmt: skip
        click.echo(f"wrote {plot}")
    if html is not None:
        drift_report.write(
            html,
            drift_report.html_report(
                frame, reference.features, currents, config.model, quality.describe()
            ),
        )
        click.echo(f"wrote {html}")
