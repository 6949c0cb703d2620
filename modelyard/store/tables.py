"""The prediction store: batch predictions and the runs that wrote them, through
SQLAlchemy Core, in a SQLite file (the embedded default) or PostgreSQL.

Tables:

- ``predictions_<model>_<version>``, one per model version, made from the declared
  ``predictions.columns`` (V2 datatype -> SQL type) plus ``model``, ``version``,
  ``run_id`` and ``predicted_at``; the primary key (model, version, run_id, <key>)
  makes every write an upsert, so a run written twice holds one row per entity.
- ``modelyard_runs``: one row per run (status running, complete or failed, shards
  done out of how many, rows, bad rows, when, the error).
- ``modelyard_run_shards``: one row per shard of a run; a run is complete when all
  of its shards are.
- ``modelyard_bad_rows``: the entities a run could not score, with the reason.

Readers ask for ``latest_run``, which is only ever a *complete* run: the rows of a
run still being written (or killed half way) are in the table but never the latest.

A version's table is its contract. When the declaration changes under an existing
table, a new prediction column is added (nullable: earlier runs have NULL there);
a column removed, renamed or retyped is refused with the table, the column, both
types and the fix (a new model version, which gets a table of its own, or a
migration), never altered silently.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError

from modelyard.errors import ModelyardError
from modelyard.store.databases import database_message, describe, resolve_url

logger = logging.getLogger("modelyard.store")

RUNS_TABLE = "modelyard_runs"
SHARDS_TABLE = "modelyard_run_shards"
BAD_ROWS_TABLE = "modelyard_bad_rows"
# The columns every predictions table has besides the key and the declared ones.
MODEL_COLUMN, VERSION_COLUMN, RUN_COLUMN, PREDICTED_AT_COLUMN = (
    "model",
    "version",
    "run_id",
    "predicted_at",
)
RESERVED_COLUMNS = (MODEL_COLUMN, VERSION_COLUMN, RUN_COLUMN, PREDICTED_AT_COLUMN)
# PostgreSQL truncates identifiers beyond 63 bytes.
MAX_IDENTIFIER = 63
# SQLite: how long a writer waits for another (a shard of the same run) to commit.
SQLITE_BUSY_TIMEOUT_S = 60
# Dialects with INSERT ... ON CONFLICT DO UPDATE.
DIALECTS = ("sqlite", "postgresql")
# SQLite: the page size of a new store (see _engine).
SQLITE_PAGE_SIZE = 16384
# SQLite: the temporary tables a chunk's declared columns are staged in (``_stage``).
STAGE_TABLE = "modelyard_stage"
# Reported errors and bad-row reasons are cut to this many characters.
MAX_ERROR_CHARS = 2000

SQL_TYPES: dict[str, sa.types.TypeEngine] = {
    "BOOL": sa.Boolean(),
    "UINT8": sa.SmallInteger(),
    "INT8": sa.SmallInteger(),
    "INT16": sa.SmallInteger(),
    "UINT16": sa.Integer(),
    "INT32": sa.Integer(),
    "UINT32": sa.BigInteger(),
    "INT64": sa.BigInteger(),
    "UINT64": sa.Numeric(20, 0),  # beyond BIGINT
    "FP16": sa.REAL(),
    "FP32": sa.REAL(),
    "FP64": sa.Double(),
    "BYTES": sa.Text(),
}
TIMESTAMP = sa.DateTime(timezone=True)


class RunStatus(StrEnum):
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"


class StoreError(ModelyardError):
    """The store cannot be used: unreachable, unsupported, or its tables disagree."""


class IncompatibleTable(StoreError):
    """A declaration that no longer fits the table its earlier runs wrote."""


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "x"


def table_name(model: str, version: str) -> str:
    """``predictions_<model>_<version>`` in lower case, letters, digits and ``_``
    (shortened with a hash where PostgreSQL would truncate it)."""
    name = f"predictions_{_slug(model)}_{_slug(version)}"
    if len(name) > MAX_IDENTIFIER:
        digest = hashlib.sha1(f"{model}\0{version}".encode()).hexdigest()[:8]
        name = f"{name[: MAX_IDENTIFIER - 9]}_{digest}"
    return name


@dataclass(frozen=True)
class PredictionsSpec:
    """What one model version stores per entity: the key and the declared columns
    (name -> V2 datatype; the key first, BYTES when it is not declared)."""

    model: str
    version: str
    key: str
    columns: Mapping[str, str]

    @classmethod
    def of(cls, model: str, version: str, key: str, columns: Mapping[str, str]) -> PredictionsSpec:
        ordered = {key: columns.get(key, "BYTES")}
        ordered.update({n: t for n, t in columns.items() if n != key})
        clash = [n for n in ordered if n in RESERVED_COLUMNS]
        if clash:
            raise StoreError(
                f"model '{model}': predictions.columns may not be named "
                f"{', '.join(repr(n) for n in clash)}; the store adds those itself, rename them"
            )
        unknown = {n: t for n, t in ordered.items() if t not in SQL_TYPES}
        if unknown:
            raise StoreError(
                f"model '{model}': predictions.columns {unknown} are not V2 datatypes; use "
                + ", ".join(SQL_TYPES)
            )
        return cls(model, version, key, ordered)

    @property
    def table_name(self) -> str:
        return table_name(self.model, self.version)

    @property
    def values(self) -> list[str]:
        """The declared columns other than the key."""
        return [n for n in self.columns if n != self.key]


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


def utc(value: datetime) -> datetime:
    """SQLite hands timestamps back without their zone; the store writes UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def now() -> datetime:
    return datetime.now(UTC)


def _run_key() -> list[sa.Column[Any]]:
    return [
        sa.Column(MODEL_COLUMN, sa.Text, primary_key=True),
        sa.Column(VERSION_COLUMN, sa.Text, primary_key=True),
        sa.Column(RUN_COLUMN, sa.Text, primary_key=True),
    ]


def _progress() -> list[sa.Column[Any]]:
    return [
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("rows", sa.BigInteger, nullable=False, default=0),
        sa.Column("bad_rows", sa.BigInteger, nullable=False, default=0),
        sa.Column("started_at", TIMESTAMP, nullable=False),
        sa.Column("finished_at", TIMESTAMP),
        sa.Column("error", sa.Text),
    ]


def _bookkeeping(metadata: sa.MetaData) -> tuple[sa.Table, sa.Table, sa.Table]:
    runs = sa.Table(
        RUNS_TABLE,
        metadata,
        *_run_key(),
        sa.Column("table_name", sa.Text, nullable=False),
        sa.Column("shards", sa.Integer, nullable=False),
        sa.Column("shards_done", sa.Integer, nullable=False, default=0),
        *_progress(),
        sa.Index(f"{RUNS_TABLE}_latest", MODEL_COLUMN, "status", "finished_at"),
    )
    shards = sa.Table(
        SHARDS_TABLE,
        metadata,
        *_run_key(),
        sa.Column("shard", sa.Integer, primary_key=True),
        *_progress(),
    )
    bad_rows = sa.Table(
        BAD_ROWS_TABLE,
        metadata,
        *_run_key(),
        sa.Column("entity", sa.Text, primary_key=True),
        sa.Column("shard", sa.Integer, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("seen_at", TIMESTAMP, nullable=False),
    )
    return runs, shards, bad_rows


def predictions_table(metadata: sa.MetaData, spec: PredictionsSpec) -> sa.Table:
    """The table of ``spec``'s model version; reusable for other per-entity tables."""
    return sa.Table(
        spec.table_name,
        metadata,
        sa.Column(MODEL_COLUMN, sa.Text, primary_key=True),
        sa.Column(VERSION_COLUMN, sa.Text, primary_key=True),
        sa.Column(RUN_COLUMN, sa.Text, primary_key=True),
        sa.Column(spec.key, SQL_TYPES[spec.columns[spec.key]], primary_key=True),
        *[sa.Column(n, SQL_TYPES[spec.columns[n]], nullable=True) for n in spec.values],
        sa.Column(PREDICTED_AT_COLUMN, TIMESTAMP, nullable=False),
        # SQLite: the primary key is the table (no separate index to maintain), which
        # more than doubles the rows/s a batch run writes.
        sqlite_with_rowid=False,
    )


class PredictionStore:
    """One store (a database URL); ``writer`` engines take SQLite's write lock when a
    transaction begins, so concurrent shards queue instead of deadlocking."""

    def __init__(self, url: URL, writer: bool = True):
        self.url = url
        self.dialect = url.get_backend_name()
        if self.dialect not in DIALECTS:
            raise StoreError(
                f"prediction store {self.describe()}: {self.dialect} is not supported; "
                "use a sqlite:/// file or a postgresql:// database"
            )
        self.metadata = sa.MetaData()
        self.runs, self.shards, self.bad_rows = _bookkeeping(self.metadata)
        self.engine = self._engine(writer)
        self._upserts: dict[tuple[str, ...], str] = {}

    @classmethod
    def open(cls, text: str, folder: Path, writer: bool = True) -> PredictionStore:
        """The store of a declaration's ``predictions.store`` (``${VAR}`` expanded, a
        relative SQLite file in the model folder)."""
        try:
            return cls(resolve_url(text, folder), writer)
        except ValueError as e:
            raise StoreError(f"predictions.store: {e}") from None

    def describe(self) -> str:
        return describe(self.url)

    def _engine(self, writer: bool) -> sa.Engine:
        if self.dialect != "sqlite":
            return sa.create_engine(self.url, pool_pre_ping=True)
        engine = sa.create_engine(
            self.url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
        )
        begin = "BEGIN IMMEDIATE" if writer else "BEGIN"

        @sa.event.listens_for(engine, "connect")
        def _connect(dbapi_connection: Any, _: Any) -> None:
            # The transactions are ours (below), not the driver's.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            if writer:
                # A new store only (SQLite ignores it once the file has tables): runs
                # write in bulk, and 16 KiB pages take a quarter of the page writes.
                cursor.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")
                # WAL: readers (the lookup model) never wait for a batch run writing.
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA temp_store=MEMORY")  # the staged chunk (_stage)
            cursor.close()

        @sa.event.listens_for(engine, "begin")
        def _begin(conn: sa.Connection) -> None:
            conn.exec_driver_sql(begin)

        return engine

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def errors(self, doing: str) -> Iterator[None]:
        """Database errors as a StoreError naming the store (never its password)."""
        try:
            yield
        except StoreError:
            raise
        except SQLAlchemyError as e:
            raise StoreError(
                f"prediction store {self.describe()}: {doing} failed: {database_message(e)}"
            ) from None

    # -- tables ----------------------------------------------------------------------
    def ensure(self, spec: PredictionsSpec) -> sa.Table:
        """Create the bookkeeping tables and ``spec``'s predictions table if missing;
        check an existing one against ``spec`` (see the module docstring)."""
        table = predictions_table(sa.MetaData(), spec)
        with self.errors("creating its tables"):
            self._create(self.metadata)
            if not self._exists(table.name):
                self._create(table.metadata)
            self._check(spec, table)
            self._check_owner(spec)
        return table

    def _exists(self, name: str) -> bool:
        with self.engine.connect() as conn:
            return sa.inspect(conn).has_table(name)

    def _create(self, metadata: sa.MetaData) -> None:
        try:
            metadata.create_all(self.engine, checkfirst=True)
        except (sa.exc.ProgrammingError, sa.exc.IntegrityError, sa.exc.OperationalError):
            # Another shard created it first (PostgreSQL reports the race as an error).
            with self.engine.connect() as conn:
                present = sa.inspect(conn).get_table_names()
            if not all(t in present for t in metadata.tables):
                raise

    def _check(self, spec: PredictionsSpec, table: sa.Table) -> None:
        with self.engine.connect() as conn:
            found = {c["name"]: c["type"] for c in sa.inspect(conn).get_columns(table.name)}
        dialect = self.engine.dialect
        problems: list[str] = []
        added: list[sa.Column] = []
        for column in table.columns:
            if column.name not in found:
                if column.name in spec.values:
                    added.append(column)
                else:
                    problems.append(f"column '{column.name}' is missing from the table")
                continue
            have, want = _sql(found[column.name], dialect), _sql(column.type, dialect)
            if have != want:
                problems.append(
                    f"column '{column.name}' is {_v2(have, dialect)} in the table but "
                    f"{spec.columns.get(column.name, want)} ({want}) in the declaration"
                )
        for name, sql_type in found.items():
            if name not in table.columns:
                problems.append(
                    f"column '{name}', {_v2(_sql(sql_type, dialect), dialect)}, is in the "
                    "table but no longer in predictions.columns (removed or renamed)"
                )
        if problems:
            raise IncompatibleTable(
                f"model '{spec.model}' version {spec.version}: the declaration does not fit "
                f"table {table.name} in {self.describe()}, which earlier runs wrote:\n  "
                + "\n  ".join(problems)
                + f"\nbump the model's version (a new version gets a table of its own), "
                f"or migrate {table.name} to the declared columns (ALTER TABLE)"
            )
        preparer = dialect.identifier_preparer
        for column in added:
            with self.engine.begin() as conn:
                conn.exec_driver_sql(
                    f"ALTER TABLE {preparer.format_table(table)} ADD COLUMN "
                    f"{preparer.format_column(column)} {_sql(column.type, dialect)}"
                )
            logger.warning(
                "model '%s' version %s: added column '%s' (%s) to %s; earlier runs have NULL "
                "there",
                spec.model, spec.version, column.name, spec.columns[column.name], table.name,
            )  # fmt: skip

    def _check_owner(self, spec: PredictionsSpec) -> None:
        """Two versions whose names fold to the same table would mix their rows."""
        with self.engine.connect() as conn:
            other = conn.execute(
                sa.select(self.runs.c.model, self.runs.c.version)
                .where(self.runs.c.table_name == spec.table_name)
                .where(sa.or_(self.runs.c.model != spec.model, self.runs.c.version != spec.version))
                .limit(1)
            ).first()
        if other is not None:
            raise StoreError(
                f"model '{spec.model}' version {spec.version} maps to table "
                f"{spec.table_name}, which model '{other.model}' version {other.version} "
                "already writes; change one of the versions"
            )

    def reflect(self, name: str) -> sa.Table | None:
        """An existing table as the database has it, or None."""
        with self.errors(f"reading table {name}"), self.engine.connect() as conn:
            if not sa.inspect(conn).has_table(name):
                return None
            return sa.Table(name, sa.MetaData(), autoload_with=conn)

    # -- runs ------------------------------------------------------------------------
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
        with self.errors(f"starting run {run_id}"), self.engine.begin() as conn:
            conn.execute(
                _insert(self.dialect, self.runs)
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
            insert = _insert(self.dialect, self.shards).values(
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
        with self.errors(f"recording the end of run {run_id}"), self.engine.begin() as conn:
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
        with self.errors("reading its runs"), self.engine.connect() as conn:
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
        with self.errors("reading its runs"), self.engine.connect() as conn:
            if not sa.inspect(conn).has_table(RUNS_TABLE):
                return None
            row = conn.execute(query).first()
        return RunInfo.from_row(row._mapping) if row is not None else None

    # -- rows ------------------------------------------------------------------------
    def _upsert_sql(self, table: sa.Table, spec: PredictionsSpec) -> str:
        """The driver SQL upserting one chunk into ``table``. Its parameters: model,
        version, run id, predicted_at, then the chunk (see ``write``)."""
        data = [spec.key, *spec.values]
        cached = self._upserts.get((table.name, *data))
        if cached is not None:
            return cached
        keys = [c.name for c in table.primary_key]
        names = [MODEL_COLUMN, VERSION_COLUMN, RUN_COLUMN, PREDICTED_AT_COLUMN, *data]
        if self.dialect == "sqlite":
            # One statement per chunk, the keys a JSON array that SQLite unpacks itself
            # and each declared column staged (see ``_stage``): the whole insert runs in
            # C without Python's GIL, so a chunk is written while the next one is
            # scored (executemany takes the GIL back every row).
            q = self.engine.dialect.identifier_preparer.quote
            stages = [f"{STAGE_TABLE}_{i}" for i in range(len(spec.values))]
            updates = [f"{q(c)} = excluded.{q(c)}" for c in names if c not in keys]
            sql = (
                f"INSERT INTO {q(table.name)} ({', '.join(q(c) for c in names)}) "
                f"SELECT ?, ?, ?, ?, k.value{''.join(f', {s}.v' for s in stages)} "
                f"FROM json_each(?) AS k"
                + "".join(f" JOIN temp.{s} AS {s} ON {s}.i = k.key" for s in stages)
                + f" WHERE true ON CONFLICT ({', '.join(q(c) for c in keys)}) "
                f"DO UPDATE SET {', '.join(updates)}"
            )
        else:
            params: list[sa.BindParameter[Any]] = [sa.bindparam(f"p{i}") for i in range(len(names))]
            stmt = _insert(self.dialect, table).values(dict(zip(names, params, strict=True)))
            stmt = stmt.on_conflict_do_update(
                index_elements=keys,
                set_={c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys},
            )
            sql = str(stmt.compile(dialect=self.engine.dialect))
        self._upserts[(table.name, *data)] = sql
        return sql

    def _stage(self, conn: sa.Connection, frame: pd.DataFrame, columns: Sequence[str]) -> None:
        """SQLite: each of ``columns`` into a temporary table of its own (row number ->
        value) for the upsert to join on. Extracting the values of a JSON array of rows costs SQLite
        a parse per value; a JSON array per column is parsed once, and numeric
        columns serialise straight from their numpy buffers."""
        for i, name in enumerate(columns):
            stage = f"temp.{STAGE_TABLE}_{i}"
            conn.exec_driver_sql(f"CREATE TABLE IF NOT EXISTS {stage} (i INTEGER PRIMARY KEY, v)")
            conn.exec_driver_sql(f"DELETE FROM {stage}")
            conn.exec_driver_sql(
                f"INSERT INTO {stage} (i, v) SELECT key, value FROM json_each(?)",
                (_json_array(frame[name].to_numpy()),),
            )

    def write(
        self, table: sa.Table, spec: PredictionsSpec, run_id: str, frame: pd.DataFrame,
        predicted_at: datetime,
    ) -> int:  # fmt: skip
        """Upsert the rows of ``frame`` (the key and the declared columns) in one
        transaction; returns how many."""
        if frame.empty:
            return 0
        sql = self._upsert_sql(table, spec)
        dialect = self.engine.dialect
        stamp = TIMESTAMP.dialect_impl(dialect).bind_processor(dialect)
        constants = (
            spec.model,
            spec.version,
            run_id,
            stamp(predicted_at) if stamp else predicted_at,
        )
        with self.errors(f"writing to {table.name}"), self.engine.begin() as conn:
            if self.dialect == "sqlite":
                self._stage(conn, frame, spec.values)
                keys = _json_array(frame[spec.key].to_numpy())
                conn.exec_driver_sql(sql, (*constants, keys))
            else:
                # Plain Python values column by column, zipped into rows: none of the
                # per-row work of SQLAlchemy's parameter handling.
                columns = [frame[c].tolist() for c in [spec.key, *spec.values]]
                names = [f"p{i}" for i in range(4 + len(columns))]
                rows = zip(*columns, strict=True)
                conn.exec_driver_sql(
                    sql, [dict(zip(names, (*constants, *row), strict=True)) for row in rows]
                )
        return len(frame)

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
        insert = _insert(self.dialect, self.bad_rows)
        stmt = insert.on_conflict_do_update(
            index_elements=[c.name for c in self.bad_rows.primary_key],
            set_={"shard": insert.excluded.shard, "error": insert.excluded.error,
                  "seen_at": insert.excluded.seen_at},
        )  # fmt: skip
        with self.errors("recording bad rows"), self.engine.begin() as conn:
            conn.execute(stmt, rows)

    def read(
        self, table: sa.Table, run: RunInfo, key: str, ids: Sequence[Any], columns: Sequence[str]
    ) -> list[sa.Row]:
        """The stored rows of ``run`` for ``ids`` (key, ``columns``, predicted_at);
        ids the run has no row for are absent."""
        if not ids:
            return []
        query = (
            sa.select(table.c[key], *[table.c[c] for c in columns], table.c[PREDICTED_AT_COLUMN])
            .where(
                table.c.model == run.model,
                table.c.version == run.version,
                table.c.run_id == run.run_id,
                table.c[key].in_(sa.bindparam("ids", expanding=True)),
            )
        )  # fmt: skip
        with self.errors(f"reading {table.name}"), self.engine.connect() as conn:
            return list(conn.execute(query, {"ids": list(ids)}).all())

    def count(self, table: sa.Table, run: RunInfo) -> tuple[int, int]:
        """Rows of ``run`` in ``table``, and distinct entities among them."""
        key = next(c for c in table.primary_key if c.name not in RESERVED_COLUMNS)
        query = sa.select(sa.func.count(), sa.func.count(sa.distinct(key))).where(
            table.c.model == run.model,
            table.c.version == run.version,
            table.c.run_id == run.run_id,
        )
        with self.errors(f"reading {table.name}"), self.engine.connect() as conn:
            rows, entities = conn.execute(query).one()
        return rows, entities


def _json_array(values: np.ndarray) -> bytes:
    """A column as a JSON array: numbers straight from their buffer (float32 in its
    shortest form, NaN as null), anything else through Python objects."""
    if values.dtype.kind in "biuf":
        return orjson.dumps(np.ascontiguousarray(values), option=orjson.OPT_SERIALIZE_NUMPY)
    return orjson.dumps(values.tolist())


def _insert(dialect: str, table: sa.Table) -> Any:
    """INSERT with ON CONFLICT for the store's dialect."""
    return (sqlite.insert if dialect == "sqlite" else postgresql.insert)(table)


def _sql(sql_type: sa.types.TypeEngine, dialect: sa.Dialect) -> str:
    return " ".join(sql_type.compile(dialect=dialect).upper().split())


def _v2(sql: str, dialect: sa.Dialect) -> str:
    """A SQL type as the V2 datatypes stored in it, e.g. ``FP32 (REAL)``."""
    names = [n for n, t in SQL_TYPES.items() if _sql(t, dialect) == sql]
    return f"{'/'.join(names)} ({sql})" if names else sql
