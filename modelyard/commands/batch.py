"""`modelyard batch run` and `modelyard batch schedule`."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import click

from modelyard.batch import DEFAULT_CHUNK_ROWS
from modelyard.logs import configure_logging

if TYPE_CHECKING:
    from modelyard.batch.run import Shard

# Kubernetes numbers the pods of an Indexed Job with this variable.
COMPLETION_INDEX_ENV = "JOB_COMPLETION_INDEX"


def _interrupt_on_sigterm() -> None:
    """SIGTERM (Kubernetes stopping the pod) ends the run as Ctrl-C does: the shard
    is recorded as failed instead of left running."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _shard(shard: str | None, shards: int | None, declared: int | None) -> Shard:
    """--shard I/N, else $JOB_COMPLETION_INDEX of --shards (or predictions.shards)."""
    from modelyard.batch.run import Shard

    try:
        if shard is not None:
            return Shard.parse(shard)
        index = os.environ.get(COMPLETION_INDEX_ENV)
        if index is None:
            if shards:
                raise ValueError(
                    f"--shards {shards} needs ${COMPLETION_INDEX_ENV}; outside an Indexed "
                    "Job say which part with --shard I/N"
                )
            return Shard()
        count = shards or declared
        if not count:
            raise ValueError(
                f"{COMPLETION_INDEX_ENV}={index} is set, but not how many shards: pass "
                "--shards N or declare predictions.shards"
            )
        return Shard(int(index), count)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--shard") from None


@click.group()
def batch() -> None:
    """Batch predictions: score every entity of a model's features into its store."""


@batch.command("run")
@click.argument("target", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--run-id",
    envvar="MODELYARD_RUN_ID",
    show_envvar=True,
    help="The run's id, the same for every shard; rerunning an id completes that run "
    "(default: the time, e.g. 20250101T030000Z).",
)
@click.option(
    "--shard",
    metavar="I/N",
    help=f"Score part I of N (0 to N-1) of the entities; default: ${COMPLETION_INDEX_ENV} "
    "of --shards (or predictions.shards), else all.",
)
@click.option(
    "--shards", type=click.IntRange(min=1), help="How many shards with $JOB_COMPLETION_INDEX."
)
@click.option(
    "--chunk-rows",
    type=click.IntRange(min=1),
    default=DEFAULT_CHUNK_ROWS,
    show_default=True,
    help="Rows fetched, scored and written at a time (bounds memory).",
)
@click.option(
    "--max-bad-rows",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Rows that fail to score (e.g. a feature that does not decode) allowed before "
    "the run fails; each is logged and recorded in the store either way.",
)
@click.option(
    "--progress/--no-progress", default=None, help="A progress bar (default: on a terminal)."
)
@click.option(
    "--candidate",
    is_flag=True,
    help="Score TARGET as its model's candidate version: into a table of its own, never "
    "the readers' latest, and compared entity by entity with the model's latest run.",
)
@click.option("--debug", is_flag=True, help="Debug logging.")
def run(
    target: Path,
    run_id: str | None,
    shard: str | None,
    shards: int | None,
    chunk_rows: int,
    max_bad_rows: int,
    progress: bool | None,
    candidate: bool,
    debug: bool,
) -> None:
    """Score every entity of TARGET (a model folder or its model.yaml) into its
    predictions.store.

    Exits 0 when this shard completed, 1 when the run failed (the store records why,
    and the run never becomes the latest).
    """
    from modelyard.batch.run import BatchJob, RunOptions
    from modelyard.errors import ModelyardError

    configure_logging(debug)
    _interrupt_on_sigterm()
    try:
        _in_model_environment(target)
        job = BatchJob(target)
        options = RunOptions(
            run_id=run_id,
            shard=_shard(shard, shards, job.shards),
            chunk_rows=chunk_rows,
            max_bad_rows=max_bad_rows,
            bar=progress,
        )
        if candidate:
            from modelyard.batch.candidate import run_candidate

            result, comparison = run_candidate(job, options)
        else:
            result, comparison = job.run(options), None
    except ModelyardError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo(
            "error: interrupted; run it again with the same --run-id to complete it", err=True
        )
        sys.exit(130)
    click.echo(result.summary())
    if comparison is not None:
        click.echo(comparison.summary())
    if result.error is not None:
        sys.exit(1)


def _in_model_environment(target: Path) -> None:
    """A folder with requirements is scored on its own environment's interpreter."""
    from modelyard import environments
    from modelyard.declarations.folders import resolve_model_folder
    from modelyard.errors import ModelyardError

    folder = resolve_model_folder(target)
    if folder is None:
        return  # BatchJob says what is wrong with it
    try:
        environments.exec_in_environment(folder, sys.argv[1:])
    except environments.EnvironmentBuildError as e:
        raise ModelyardError(f"{folder}: {e}") from None


@batch.command("schedule")
@click.argument("target", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--now", "fire_now", is_flag=True, help="Run once right away, then follow the schedule."
)
@click.option("--once", is_flag=True, help="Stop after one run.")
@click.option(
    "--chunk-rows", type=click.IntRange(min=1), default=DEFAULT_CHUNK_ROWS, show_default=True
)
@click.option("--max-bad-rows", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--debug", is_flag=True, help="Debug logging.")
def schedule(
    target: Path, fire_now: bool, once: bool, chunk_rows: int, max_bad_rows: int, debug: bool
) -> None:
    """Run TARGET's batch predictions on its predictions.schedule (cron, UTC), in the
    foreground: for development; on Kubernetes a CronJob runs `modelyard batch run`."""
    from modelyard.batch.run import RunOptions
    from modelyard.batch.schedule import Scheduler
    from modelyard.errors import ModelyardError

    configure_logging(debug)
    try:
        scheduler = Scheduler(
            target, RunOptions(chunk_rows=chunk_rows, max_bad_rows=max_bad_rows, bar=False)
        )
        failures = scheduler.loop(now=fire_now, once=once, report=click.echo)
    except ModelyardError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("stopped", err=True)
        sys.exit(130)
    if once and failures:
        sys.exit(1)
