"""The run ledger of a store: which runs wrote a model version's predictions, shard by
shard, and which one readers see.

A run is complete once every one of its shards is. Readers ask for ``latest_run``,
which is only ever a *complete* run: the rows of a run still being written (or killed
half way) are in the table but never the latest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa

from modelyard.store.tables import (
    RUNS_TABLE,
    Bookkeeping,
    PredictionsSpec,
    StoreError,
    dialect_insert,
    errors,
    now,
    utc,
)

# Reported errors and bad-row reasons are cut to this many characters.
MAX_ERROR_CHARS = 2000


class RunStatus(StrEnum):
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"


@dataclass(frozen=True)
class RunInfo:
    """One run as the runs table has it."""

    model: str
    version: str
    run_id: str
    table: str
    shards: int
    shards_done: int
    status: RunStatus
    rows: int
    bad_rows: int
    started_at: datetime
    finished_at: datetime | None
    error: str | None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> RunInfo:
        return cls(
            model=row["model"],
            version=row["version"],
            run_id=row["run_id"],
            table=row["table_name"],
            shards=row["shards"],
            shards_done=row["shards_done"],
            status=RunStatus(row["status"]),
            rows=row["rows"],
            bad_rows=row["bad_rows"],
            started_at=utc(row["started_at"]),
            finished_at=utc(row["finished_at"]) if row["finished_at"] is not None else None,
            error=row["error"],
        )


class RunLedger:
    """The runs, shards and bad rows of one store; each shard's start and end is one
    transaction, under its run's lock."""

    def __init__(self, engine: sa.Engine, bookkeeping: Bookkeeping):
        self.engine = engine
        self.dialect = engine.dialect.name
        self.runs = bookkeeping.runs
        self.shards = bookkeeping.shards
        self.bad_rows = bookkeeping.bad_rows

    def _run_key(self, table: sa.Table, spec: PredictionsSpec, run_id: str) -> Any:
        return sa.and_(
            table.c.model == spec.model,
            table.c.version == spec.version,
            table.c.run_id == run_id,
        )

    def _lock_run(self, conn: sa.Connection, spec: PredictionsSpec, run_id: str) -> Any:
        # PostgreSQL: the run's row is locked until commit, so shards finishing at the
        # same moment count each other; SQLite: the transaction holds the write lock.
        return conn.execute(
            sa.select(self.runs).where(self._run_key(self.runs, spec, run_id)).with_for_update()
        ).first()

    def start_shard(self, spec: PredictionsSpec, run_id: str, shard: int, shards: int) -> None:
        """Record that ``shard`` of ``shards`` is being (re)written; the run is not
        complete (not the latest) until every shard finishes again."""
        started = now()
        with errors(self.engine, f"starting run {run_id}"), self.engine.begin() as conn:
            conn.execute(
                dialect_insert(self.dialect, self.runs)
                .values(
                    model=spec.model,
                    version=spec.version,
                    run_id=run_id,
                    table_name=spec.table_name,
                    shards=shards,
                    shards_done=0,
                    status=RunStatus.RUNNING,
                    rows=0,
                    bad_rows=0,
                    started_at=started,
                )
                .on_conflict_do_nothing()
            )
            run = self._lock_run(conn, spec, run_id)
            if run.shards != shards:
                raise StoreError(
                    f"run {run_id} of model '{spec.model}' version {spec.version} was started "
                    f"with {run.shards} shard(s), not {shards}; run its shards as i/{run.shards} "
                    "or give this run another id"
                )
            values = dict(
                status=RunStatus.RUNNING, rows=0, bad_rows=0, started_at=started,
                finished_at=None, error=None,
            )  # fmt: skip
            insert = dialect_insert(self.dialect, self.shards).values(
                model=spec.model, version=spec.version, run_id=run_id, shard=shard, **values
            )
            conn.execute(
                insert.on_conflict_do_update(
                    index_elements=[c.name for c in self.shards.primary_key], set_=values
                )
            )
            conn.execute(
                self.bad_rows.delete().where(
                    self._run_key(self.bad_rows, spec, run_id), self.bad_rows.c.shard == shard
                )
            )
            self._tally(conn, spec, run_id)

    def finish_shard(
        self, spec: PredictionsSpec, run_id: str, shard: int, rows: int, bad_rows: int
    ) -> RunInfo:
        """Mark ``shard`` complete; the run completes with its last shard."""
        return self._end_shard(spec, run_id, shard, RunStatus.COMPLETE, rows, bad_rows, None)

    def fail_shard(
        self, spec: PredictionsSpec, run_id: str, shard: int, error: str, rows: int = 0,
        bad_rows: int = 0,
    ) -> RunInfo:  # fmt: skip
        """Mark ``shard``, and so its run, failed; rerunning the shard clears it."""
        return self._end_shard(
            spec, run_id, shard, RunStatus.FAILED, rows, bad_rows, error[:MAX_ERROR_CHARS]
        )

    def _end_shard(
        self, spec: PredictionsSpec, run_id: str, shard: int, status: RunStatus, rows: int,
        bad_rows: int, error: str | None,
    ) -> RunInfo:  # fmt: skip
        with errors(self.engine, f"recording the end of run {run_id}"), self.engine.begin() as conn:
            self._lock_run(conn, spec, run_id)
            conn.execute(
                self.shards.update()
                .where(self._run_key(self.shards, spec, run_id), self.shards.c.shard == shard)
                .values(status=status, rows=rows, bad_rows=bad_rows, finished_at=now(), error=error)
            )
            return self._tally(conn, spec, run_id)

    def _tally(self, conn: sa.Connection, spec: PredictionsSpec, run_id: str) -> RunInfo:
        """The run's row from its shards' (under the run's lock)."""
        s = self.shards.c
        shards = conn.execute(
            sa.select(s.shard, s.status, s.rows, s.bad_rows, s.error).where(
                self._run_key(self.shards, spec, run_id)
            )
        ).all()
        run = self._lock_run(conn, spec, run_id)
        done = sum(1 for r in shards if r.status == RunStatus.COMPLETE)
        failed = [r for r in shards if r.status == RunStatus.FAILED]
        if failed:
            status = RunStatus.FAILED
        elif done == run.shards:
            status = RunStatus.COMPLETE
        else:
            status = RunStatus.RUNNING
        values = dict(
            shards_done=done,
            status=status,
            rows=sum(r.rows for r in shards),
            bad_rows=sum(r.bad_rows for r in shards),
            finished_at=now() if status != RunStatus.RUNNING else None,
            error="; ".join(f"shard {r.shard}: {r.error}" for r in failed)[:MAX_ERROR_CHARS]
            or None,
        )
        conn.execute(
            self.runs.update().where(self._run_key(self.runs, spec, run_id)).values(**values)
        )
        return RunInfo.from_row({**run._mapping, **values})

    def run(self, model: str, version: str, run_id: str) -> RunInfo | None:
        r = self.runs.c
        with errors(self.engine, "reading its runs"), self.engine.connect() as conn:
            row = conn.execute(
                sa.select(self.runs).where(
                    r.model == model, r.version == version, r.run_id == run_id
                )
            ).first()
        return RunInfo.from_row(row._mapping) if row is not None else None

    def latest_run(self, model: str, version: str | None = None) -> RunInfo | None:
        """The complete run of ``model`` (of any version unless given) that finished
        last; None before the first completes. Runs still being written never are."""
        r = self.runs.c
        query = sa.select(self.runs).where(r.model == model, r.status == RunStatus.COMPLETE)
        if version is not None:
            query = query.where(r.version == version)
        query = query.order_by(r.finished_at.desc(), r.run_id.desc()).limit(1)
        with errors(self.engine, "reading its runs"), self.engine.connect() as conn:
            if not sa.inspect(conn).has_table(RUNS_TABLE):
                return None
            row = conn.execute(query).first()
        return RunInfo.from_row(row._mapping) if row is not None else None

    def runs_of(self, model: str) -> list[RunInfo]:
        """Every run of ``model`` (any version), the last to finish first."""
        r = self.runs.c
        query = (
            sa.select(self.runs)
            .where(r.model == model)
            .order_by(r.finished_at.desc(), r.run_id.desc())
        )
        with errors(self.engine, "reading its runs"), self.engine.connect() as conn:
            if not sa.inspect(conn).has_table(RUNS_TABLE):
                return []
            return [RunInfo.from_row(row._mapping) for row in conn.execute(query)]

    def expired(self, model: str, keep: int) -> list[RunInfo]:
        """The runs of ``model`` (any version) that ``keep_runs: keep`` drops: complete
        runs beyond the ``keep`` that finished last, and failed runs older than the
        latest complete one. The latest complete run, and runs still being written,
        never are."""
        if keep < 1:
            raise ValueError(f"keep_runs {keep}: keep at least the latest complete run (1)")
        runs = [run for run in self.runs_of(model) if run.status != RunStatus.RUNNING]
        complete = [run for run in runs if run.status == RunStatus.COMPLETE]
        if not complete:
            return []
        newest = complete[0].finished_at
        assert newest is not None
        return complete[keep:] + [
            run for run in runs
            if run.status == RunStatus.FAILED and run.finished_at is not None
            and run.finished_at < newest
        ]  # fmt: skip

    def forget(self, conn: sa.Connection, run: RunInfo) -> None:
        """Remove ``run`` from the ledger (its rows are the caller's to delete)."""
        key = dict(model=run.model, version=run.version, run_id=run.run_id)
        for table in (self.bad_rows, self.shards, self.runs):
            conn.execute(
                table.delete().where(*[table.c[name] == value for name, value in key.items()])
            )

    def record_bad_rows(
        self, spec: PredictionsSpec, run_id: str, shard: int, bad: Sequence[tuple[Any, str]]
    ) -> None:
        if not bad:
            return
        seen = now()
        rows = [
            dict(
                model=spec.model,
                version=spec.version,
                run_id=run_id,
                entity=str(entity),
                shard=shard,
                error=error[:MAX_ERROR_CHARS],
                seen_at=seen,
            )
            for entity, error in bad
        ]
        insert = dialect_insert(self.dialect, self.bad_rows)
        stmt = insert.on_conflict_do_update(
            index_elements=[c.name for c in self.bad_rows.primary_key],
            set_={"shard": insert.excluded.shard, "error": insert.excluded.error,
                  "seen_at": insert.excluded.seen_at},
        )  # fmt: skip
        with errors(self.engine, "recording bad rows"), self.engine.begin() as conn:
            conn.execute(stmt, rows)
