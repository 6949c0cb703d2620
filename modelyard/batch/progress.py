"""How a batch run shows its progress: a rich bar on a terminal (rows, rows/s, ETA),
plain log lines every few seconds anywhere else (a Kubernetes pod's log)."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

logger = logging.getLogger("modelyard.batch")

# Plain progress lines: one every this many seconds.
LOG_EVERY_S = 10.0


class Reporter(Protocol):
    def total(self, rows: int) -> None: ...
    def update(self, read: int, scored: int, bad: int) -> None: ...
    def close(self) -> None: ...


class RowsColumn(ProgressColumn):
    """Rows read (of how many, once counted), rows/s and bad rows, in one cell."""

    def render(self, task: Task) -> Text:
        done = f"{int(task.completed):,}" + (f"/{int(task.total):,}" if task.total else "")
        speed = task.finished_speed or task.speed
        rate = f"{speed:,.0f} rows/s" if speed else "- rows/s"
        bad = f" {task.fields['bad']:,} bad" if task.fields["bad"] else ""
        return Text(f"{done} rows {rate}{bad}", style="progress.data.speed")


class BarReporter:
    """A rich progress bar on stderr; the bar fills once the row count is known."""

    def __init__(self, label: str, console: Console | None = None):
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=16),
            RowsColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console or Console(stderr=True),
            transient=False,
        )
        self.task = self.progress.add_task(label, total=None, bad=0)
        self.progress.start()

    def total(self, rows: int) -> None:
        self.progress.update(self.task, total=rows)

    def update(self, read: int, scored: int, bad: int) -> None:
        self.progress.update(self.task, completed=read, bad=bad)

    def close(self) -> None:
        self.progress.stop()


class LogReporter:
    """A log line every ``every`` seconds: rows read and scored, rows/s, ETA if known."""

    def __init__(
        self, label: str, every: float = LOG_EVERY_S, clock: Callable[[], float] = time.monotonic
    ):
        self.label = label
        self.every = every
        self.clock = clock
        self.started = self.last = clock()
        self.rows: int | None = None

    def total(self, rows: int) -> None:
        self.rows = rows

    def update(self, read: int, scored: int, bad: int) -> None:
        at = self.clock()
        if at - self.last < self.every:
            return
        self.last = at
        rate = read / max(at - self.started, 1e-9)
        line = (
            f"{self.label}: {read:,} rows read, {scored:,} scored, {bad:,} bad, {rate:,.0f} rows/s"
        )
        if self.rows:
            left = max(self.rows - read, 0) / rate if rate else float("nan")
            line += f", {100 * read / self.rows:.0f}% of {self.rows:,}, ETA {left:,.0f} s"
        logger.info("%s", line)

    def close(self) -> None:
        pass


def reporter(label: str, bar: bool | None) -> Reporter:
    """A bar when asked, or by default when stderr is a terminal; log lines otherwise."""
    if bar is None:
        bar = sys.stderr.isatty()
    return BarReporter(label) if bar else LogReporter(label)


def count_in_background(count: Callable[[], int], report: Reporter) -> threading.Thread:
    """Count the rows to come on a thread of its own: the bar gets its total (and an
    ETA) once the database answers, and the run never waits for it."""

    def work() -> None:
        try:
            report.total(count())
        except Exception as e:  # an estimate only: the run goes on without it
            logger.debug("counting the rows failed: %s", e)

    thread = threading.Thread(target=work, name="batch-count", daemon=True)
    thread.start()
    return thread
