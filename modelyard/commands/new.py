from __future__ import annotations

from pathlib import Path

import click

RUNTIMES = [
    "sklearn", "xgboost", "lightgbm", "catboost", "mlflow", "onnx", "huggingface",
    "predictor", "custom",
]  # fmt: skip
TEMPLATES = ["no-code", "low-code", "full-custom"]


@click.command()
@click.argument("name")
@click.option(
    "--runtime",
    required=True,
    type=click.Choice(RUNTIMES),
    help="sklearn, xgboost, lightgbm, catboost, mlflow, onnx, huggingface (no-code); "
    "predictor (low-code); custom (full-custom).",
)
@click.option(
    "--template",
    required=True,
    type=click.Choice(TEMPLATES),
    help="no-code: a declaration for a pre-built runtime; low-code: a predictor class; "
    "full-custom: a model class behind a FastAPI service.",
)
@click.option(
    "--dir",
    "directory",
    default="model-settings",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the NAME folder is made.",
)
def new(name: str, runtime: str, template: str, directory: Path) -> None:
    """Make a model folder NAME that validates, serves and has a test of its own.

    \b
      modelyard new churn --runtime sklearn --template no-code      # then add model.joblib
      modelyard new churn --runtime predictor --template low-code   # predictor.py + test
      modelyard new churn --runtime custom --template full-custom   # FastAPI service + test
    """
    from modelyard.scaffold import ScaffoldError, scaffold

    try:
        folder = scaffold(name, runtime, template, directory)
    except ScaffoldError as e:
        raise click.UsageError(str(e)) from None
    click.echo(f"created {folder}/")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        click.echo(f"  {path.relative_to(folder)}")
    click.echo(f"next: read {folder / 'README.md'}, then `modelyard validate {folder}`")
