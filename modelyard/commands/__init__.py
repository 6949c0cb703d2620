"""The CLI's commands, and the options several of them share."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click


def model_store_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--dir`` (where a model NAME is looked up) and ``--store`` (the store's URL), as
    the commands that read a model's store take them."""
    command = click.option(
        "--store", help="The store's SQLAlchemy URL, instead of the declared one."
    )(command)
    return click.option(
        "--dir", "directory", type=click.Path(path_type=Path), default=Path("model-settings"),
        show_default=True, help="Where to find NAME when it is a model name, not a folder.",
    )(command)  # fmt: skip
