"""`modelyard batch schedule`: a declaration's cron ``predictions.schedule`` run in the
foreground, for development. On Kubernetes a CronJob runs `modelyard batch run`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from croniter import croniter

from modelyard.batch.run import BatchError, BatchJob, RunOptions, default_run_id

logger = logging.getLogger("modelyard.batch")

# The longest single sleep: a clock change or Ctrl-C is noticed within this.
MAX_SLEEP_S = 30.0


def next_firing(schedule: str, after: datetime) -> datetime:
    """The first time after ``after`` that the cron ``schedule`` (UTC) fires."""
    return croniter(schedule, after.astimezone(UTC)).get_next(datetime)


class Scheduler:
    def __init__(
        self,
        target: Path,
        options: RunOptions,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.target = target
        self.options = options
        self.clock = clock
        self.sleep = sleep
        self.schedule = self._schedule(BatchJob(target))

    @staticmethod
    def _schedule(job: BatchJob) -> str:
        if not job.schedule:
            raise BatchError(
                f"model '{job.spec.model}' declares no predictions.schedule; add one, e.g. "
                'schedule: "0 3 * * *" for 03:00 UTC every day'
            )
        return job.schedule

    def fire(self, at: datetime, report: Callable[[str], None]) -> bool:
        """One run, named after the time it was due; True when it completed. The folder
        is read again each time, so a new model version is picked up."""
        try:
            job = BatchJob(self.target)
            self.schedule = self._schedule(job)
            result = job.run(
                RunOptions(
                    run_id=default_run_id(at),
                    chunk_rows=self.options.chunk_rows,
                    max_bad_rows=self.options.max_bad_rows,
                    bar=self.options.bar,
                )
            )
        except BatchError as e:
            report(f"run due at {at.isoformat()} did not start: {e}")
            return False
        except Exception as e:  # the next firing may well work: keep the schedule going
            logger.exception("run due at %s failed", at.isoformat())
            report(f"run due at {at.isoformat()} failed: {type(e).__name__}: {e}")
            return False
        report(result.summary())
        return result.error is None

    def loop(
        self, now: bool = False, once: bool = False, report: Callable[[str], None] = print
    ) -> int:
        """Run at every firing (and first right away with ``now``); with ``once``, stop
        after one run. Returns how many runs failed."""
        failures = 0
        if now:
            failures += not self.fire(self.clock(), report)
            if once:
                return failures
        while True:
            due = next_firing(self.schedule, self.clock())
            report(f"next run at {due.isoformat()} ({self.schedule!r}, UTC)")
            while (left := (due - self.clock()).total_seconds()) > 0:
                self.sleep(min(left, MAX_SLEEP_S))
            failures += not self.fire(due, report)
            if once:
                return failures
