"""The prediction store's tables, and the contract a model version's table keeps with
its declaration.

- ``predictions_<model>_<version>``, one per model version, made from the declared
  ``predictions.columns`` (V2 datatype -> SQL type) plus ``model``, ``version``,
  ``run_id`` and ``predicted_at``; the primary key (model, version, run_id, <key>)
  makes every write an upsert, so a run written twice holds one row per entity.
- ``modelyard_runs``: one row per run (status running, complete or failed, shards
  done out of how many, rows, bad rows, when, the error).
- ``modelyard_run_shards``: one row per shard of a run; a run is complete when all
  of its shards are.
- ``modelyard_bad_rows``: the entities a run could not score, with the reason.

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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from modelyard.errors import ModelyardError
from modelyard.store.databases import database_message, describe

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


def bound_timestamp(dialect: sa.Dialect, value: datetime) -> Any:
    """``value`` as the driver takes a TIMESTAMP column's value in SQL sent as is
    (SQLite's text; other drivers take the datetime)."""
    stamp = TIMESTAMP.dialect_impl(dialect).bind_processor(dialect)
    return stamp(value) if stamp else value


def driver_executemany(
    conn: sa.Connection, statement: sa.sql.compiler.SQLCompiler, names: Sequence[str],
    rows: Iterable[Sequence[Any]],
) -> None:  # fmt: skip
    """``statement`` run once per row through the driver's own executemany, each row's
    values in the order of ``names`` (the statement's bound parameters), already as the
    driver takes them (see `bound_timestamp`): SQLAlchemy's parameter handling per row
    costs more than the write. Tuples in the statement's order for a positional driver
    (SQLite's ?), dicts for a named one (psycopg's %(name)s)."""
    if statement.positional:
        order = [names.index(n) for n in statement.positiontup or ()]
        params: list[Any] = [tuple(row[i] for i in order) for row in rows]
    else:
        params = [dict(zip(names, row, strict=True)) for row in rows]
    if params:
        conn.exec_driver_sql(statement.string, params)


class StoreError(ModelyardError):
    """The store cannot be used: unreachable, unsupported, or its tables disagree."""


class IncompatibleTable(StoreError):
    """A declaration that no longer fits the table its earlier runs wrote."""


@contextmanager
def errors(engine: sa.Engine, doing: str) -> Iterator[None]:
    """Database errors as a StoreError naming the store (never its password)."""
    try:
        yield
    except StoreError:
        raise
    except SQLAlchemyError as e:
        raise StoreError(
            f"prediction store {describe(engine.url)}: {doing} failed: {database_message(e)}"
        ) from None


def utc(value: datetime) -> datetime:
    """SQLite hands timestamps back without their zone; the store writes UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def now() -> datetime:
    return datetime.now(UTC)


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


@dataclass(frozen=True)
class Bookkeeping:
    """The tables of a store besides its predictions: runs, their shards, bad rows."""

    metadata: sa.MetaData
    runs: sa.Table
    shards: sa.Table
    bad_rows: sa.Table

    @classmethod
    def define(cls) -> Bookkeeping:
        metadata = sa.MetaData()
        return cls(metadata, *_bookkeeping(metadata))


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


class Tables:
    """The tables of one store: made when missing, and an existing predictions table
    held to its declaration (see the module docstring)."""

    def __init__(self, engine: sa.Engine, bookkeeping: Bookkeeping):
        self.engine = engine
        self.metadata = bookkeeping.metadata
        self.runs = bookkeeping.runs

    def ensure(self, spec: PredictionsSpec) -> sa.Table:
        """Create the bookkeeping tables and ``spec``'s predictions table if missing;
        check an existing one against ``spec`` (see the module docstring)."""
        table = predictions_table(sa.MetaData(), spec)
        with errors(self.engine, "creating its tables"):
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
        create_missing(self.engine, metadata)

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
                f"table {table.name} in {describe(self.engine.url)}, which earlier runs wrote:\n  "
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
        with errors(self.engine, f"reading table {name}"), self.engine.connect() as conn:
            if not sa.inspect(conn).has_table(name):
                return None
            return sa.Table(name, sa.MetaData(), autoload_with=conn)


def dialect_insert(dialect: str, table: sa.Table) -> Any:
    """INSERT with ON CONFLICT for the store's dialect."""
    return (sqlite.insert if dialect == "sqlite" else postgresql.insert)(table)


def _sql(sql_type: sa.types.TypeEngine, dialect: sa.Dialect) -> str:
    return " ".join(sql_type.compile(dialect=dialect).upper().split())


def _v2(sql: str, dialect: sa.Dialect) -> str:
    """A SQL type as the V2 datatypes stored in it, e.g. ``FP32 (REAL)``."""
    names = [n for n, t in SQL_TYPES.items() if _sql(t, dialect) == sql]
    return f"{'/'.join(names)} ({sql})" if names else sql


def create_missing(engine: sa.Engine, metadata: sa.MetaData) -> None:
    """Create ``metadata``'s tables that do not exist yet, when shards running at once may
    create them too (PostgreSQL reports the race as an error: the table is there)."""
    try:
        metadata.create_all(engine, checkfirst=True)
    except (sa.exc.ProgrammingError, sa.exc.IntegrityError, sa.exc.OperationalError):
        with engine.connect() as conn:
            present = sa.inspect(conn).get_table_names()
        if not all(t in present for t in metadata.tables):
            raise
