"""Predictions in and out of a model version's table: a scored chunk written in one
transaction, straight into the table since a run's rows are new (SQLite: one INSERT;
PostgreSQL: COPY), upserted when some are there already; and the rows of a run read
back by entity id."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

import numpy as np
import orjson
import pandas as pd
import sqlalchemy as sa

from modelyard.store.runs import RunInfo
from modelyard.store.tables import (
    MODEL_COLUMN,
    PREDICTED_AT_COLUMN,
    RESERVED_COLUMNS,
    RUN_COLUMN,
    VERSION_COLUMN,
    PredictionsSpec,
    bound_timestamp,
    dialect_insert,
    driver_executemany,
    errors,
)

# The temporary tables a chunk is staged in: SQLite, a table per declared column
# (``_stage``); PostgreSQL, the chunk's rows COPYed in (``_copy``).
STAGE_TABLE = "modelyard_stage"


class Predictions:
    """The predictions tables of one store: what a batch run writes and the lookup
    model reads."""

    def __init__(self, engine: sa.Engine, copy: bool = True, direct: bool = True):
        self.engine = engine
        self.dialect = engine.dialect.name
        # PostgreSQL: write through COPY (else one INSERT per row) ...
        self.copy = copy and engine.dialect.driver == "psycopg"
        # ... straight into the table (SQLite too), the upsert only for a chunk whose
        # rows are there already (a shard written again, a key repeated across chunks).
        self.direct = direct
        # The statements of a table and its declared columns, made once.
        self._sqlite_statements: dict[tuple[str, ...], tuple[str, str]] = {}
        self._upserts: dict[tuple[str, ...], tuple[sa.sql.compiler.SQLCompiler, list[str]]] = {}
        self._types: dict[tuple[str, ...], list[int]] = {}

    def _sqlite_sql(self, table: sa.Table, spec: PredictionsSpec) -> tuple[str, str]:
        """SQLite: one chunk INSERTed, for rows that are new, and the same upserted.
        Their parameters: model, version, run id, predicted_at, then the chunk's keys as
        a JSON array (see ``write``). Without the upsert's conflict clause SQLite checks
        the primary key as it inserts all the same, and writes 10% more rows/s.

        One statement per chunk, the keys a JSON array that SQLite unpacks itself and
        each declared column staged (see ``_stage``): the whole insert runs in C without
        Python's GIL, so a chunk is written while the next one is scored (executemany
        takes the GIL back every row)."""
        cached = self._sqlite_statements.get(_statements_key(table, spec))
        if cached is not None:
            return cached
        keys = [c.name for c in table.primary_key]
        names = _chunk_columns(spec)
        q = self.engine.dialect.identifier_preparer.quote
        stages = [f"{STAGE_TABLE}_{i}" for i in range(len(spec.values))]
        updates = [f"{q(c)} = excluded.{q(c)}" for c in names if c not in keys]
        insert = (
            f"INSERT INTO {q(table.name)} ({', '.join(q(c) for c in names)}) "
            f"SELECT ?, ?, ?, ?, k.value{''.join(f', {s}.v' for s in stages)} "
            f"FROM json_each(?) AS k"
            + "".join(f" JOIN temp.{s} AS {s} ON {s}.i = k.key" for s in stages)
        )
        # WHERE true: without it SQLite would read ON CONFLICT as the join's ON.
        upsert = (
            f"{insert} WHERE true ON CONFLICT ({', '.join(q(c) for c in keys)}) "
            f"DO UPDATE SET {', '.join(updates)}"
        )
        self._sqlite_statements[_statements_key(table, spec)] = (insert, upsert)
        return insert, upsert

    def _upsert(
        self, table: sa.Table, spec: PredictionsSpec
    ) -> tuple[sa.sql.compiler.SQLCompiler, list[str]]:
        """PostgreSQL without COPY: one row upserted, for the driver's executemany, and
        the names of its parameters, which are the chunk's columns (`_chunk_columns`) in
        their order."""
        cached = self._upserts.get(_statements_key(table, spec))
        if cached is not None:
            return cached
        keys = [c.name for c in table.primary_key]
        names = _chunk_columns(spec)
        params = [f"p{i}" for i in range(len(names))]
        stmt = dialect_insert(self.dialect, table).values(
            {name: sa.bindparam(param) for name, param in zip(names, params, strict=True)}
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=keys,
            set_={c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys},
        )
        compiled = cast(sa.sql.compiler.SQLCompiler, stmt.compile(dialect=self.engine.dialect))
        self._upserts[_statements_key(table, spec)] = compiled, params
        return compiled, params

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
        constants = (
            spec.model,
            spec.version,
            run_id,
            bound_timestamp(self.engine.dialect, predicted_at),
        )
        with errors(self.engine, f"writing to {table.name}"), self.engine.begin() as conn:
            if self.dialect == "sqlite":
                insert, upsert = self._sqlite_sql(table, spec)
                self._stage(conn, frame, spec.values)
                keys = _json_array(frame[spec.key].to_numpy())
                if self.direct:
                    try:
                        conn.exec_driver_sql(insert, (*constants, keys))
                        return len(frame)
                    except sa.exc.IntegrityError:
                        # A row there already: SQLite backs the statement out (and
                        # only it), and the same transaction upserts the chunk.
                        pass
                conn.exec_driver_sql(upsert, (*constants, keys))
            elif self.dialect == "postgresql" and self.copy:
                self._copy(conn, table, spec, frame, constants)
            else:
                # Plain Python values column by column, zipped into rows.
                columns = [frame[c].tolist() for c in [spec.key, *spec.values]]
                rows = ((*constants, *row) for row in zip(*columns, strict=True))
                driver_executemany(conn, *self._upsert(table, spec), rows)
        return len(frame)

    def _copy(
        self, conn: sa.Connection, table: sa.Table, spec: PredictionsSpec, frame: pd.DataFrame,
        constants: tuple[Any, ...],
    ) -> None:  # fmt: skip
        """PostgreSQL: the chunk COPYed straight into ``table``: a run's rows are new
        (its own run id), so nothing is there to update, and COPY into the table is the
        server's fastest insert (no staging table, no conflict check per row). Where a
        row is there already (a shard run again after a failure, a key repeated across
        chunks) the primary key refuses the COPY, which is rolled back to its
        savepoint, and the chunk is COPYed into a temporary staging table (emptied at
        commit) and upserted in one INSERT ... ON CONFLICT DO UPDATE instead."""
        q = self.engine.dialect.identifier_preparer.quote
        data = [spec.key, *spec.values]
        names = _chunk_columns(spec)
        if self.direct:
            import psycopg

            cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            try:
                types = self._column_types(cursor, table.name, names)
                cursor.execute("SAVEPOINT modelyard_copy")
                try:
                    statement = (
                        f"COPY {q(table.name)} ({', '.join(q(c) for c in names)}) "
                        "FROM STDIN (FORMAT BINARY)"
                    )
                    with cursor.copy(statement) as copy:
                        # Binary: each value dumped by its column's type in C, no text
                        # formatting per value (0.46 against 3.5 µs of CPU per row).
                        copy.set_types(types)
                        for row in zip(*[frame[c].tolist() for c in data], strict=True):
                            copy.write_row((*constants, *row))
                except psycopg.errors.UniqueViolation:
                    cursor.execute("ROLLBACK TO SAVEPOINT modelyard_copy")
                else:
                    cursor.execute("RELEASE SAVEPOINT modelyard_copy")
                    return
            finally:
                cursor.close()
        # Per table and columns: a connection's staging table outlives a changed declaration.
        digest = hashlib.sha1("\0".join([table.name, *data]).encode()).hexdigest()[:12]
        stage = f"{STAGE_TABLE}_{digest}"
        keys = [c.name for c in table.primary_key]
        listed = ", ".join(q(c) for c in data)
        updates = ", ".join(f"{q(c)} = excluded.{q(c)}" for c in names if c not in keys)
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(
                f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS AS "
                f"SELECT {listed} FROM {q(table.name)} WITH NO DATA"
            )
            with cursor.copy(f"COPY {stage} ({listed}) FROM STDIN") as copy:
                for row in zip(*[frame[c].tolist() for c in data], strict=True):
                    copy.write_row(row)
            cursor.execute(
                f"INSERT INTO {q(table.name)} ({', '.join(q(c) for c in names)}) "
                f"SELECT %s, %s, %s, %s, {listed} FROM {stage} "
                f"ON CONFLICT ({', '.join(q(c) for c in keys)}) DO UPDATE SET {updates}",
                constants,
            )
        finally:
            cursor.close()

    def _column_types(self, cursor: Any, table: str, names: Sequence[str]) -> list[int]:
        """The type OIDs of ``names`` in ``table``, as binary COPY needs them."""
        cached = self._types.get((table, *names))
        if cached is None:
            cursor.execute(
                "SELECT attname, atttypid FROM pg_attribute "
                "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
                (self.engine.dialect.identifier_preparer.quote(table),),
            )
            oids = dict(cursor.fetchall())
            cached = self._types[(table, *names)] = [int(oids[n]) for n in names]
        return cached

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
        with errors(self.engine, f"reading {table.name}"), self.engine.connect() as conn:
            return list(conn.execute(query, {"ids": list(ids)}).all())

    def count(self, table: sa.Table, run: RunInfo) -> tuple[int, int]:
        """Rows of ``run`` in ``table``, and distinct entities among them."""
        key = next(c for c in table.primary_key if c.name not in RESERVED_COLUMNS)
        query = sa.select(sa.func.count(), sa.func.count(sa.distinct(key))).where(
            table.c.model == run.model,
            table.c.version == run.version,
            table.c.run_id == run.run_id,
        )
        with errors(self.engine, f"reading {table.name}"), self.engine.connect() as conn:
            rows, entities = conn.execute(query).one()
        return rows, entities


def _json_array(values: np.ndarray) -> bytes:
    """A column as a JSON array: numbers straight from their buffer (float32 in its
    shortest form, NaN as null), anything else through Python objects."""
    if values.dtype.kind in "biuf":
        return orjson.dumps(np.ascontiguousarray(values), option=orjson.OPT_SERIALIZE_NUMPY)
    return orjson.dumps(values.tolist())


def _statements_key(table: sa.Table, spec: PredictionsSpec) -> tuple[str, ...]:
    """What the statements that write a chunk into ``table`` are made from."""
    return (table.name, *_chunk_columns(spec))


def _chunk_columns(spec: PredictionsSpec) -> list[str]:
    """The columns a chunk writes, in the order of every write's parameters."""
    return [MODEL_COLUMN, VERSION_COLUMN, RUN_COLUMN, PREDICTED_AT_COLUMN, spec.key, *spec.values]
