"""Features for entity ids, fetched from a database by the declared ``features.sql``.

The convention, the same on SQLite, DuckDB and PostgreSQL: ``features.sql`` selects
the features of *every* entity, one row per key, with no filter of its own. Online,
the runtime runs it filtered by the requested ids:

    SELECT * FROM (<features.sql>) AS features WHERE features.<key> IN (?, ?, ...)

with each id a bound parameter, never text spliced into the SQL (an id such as
``1; DROP TABLE users`` is just an id that matches nothing), one query per request,
on a pooled connection. The databases push the filter down into the query, so an
index on the key is used. The batch scorer streams the same SQL unfiltered.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from modelyard.batch.shards import register_sqlite, shard_query
from modelyard.store.databases import create_engine, database_message, describe, resolve_url
from modelyard_runtimes.errors import FeatureSourceError, ModelError

logger = logging.getLogger("modelyard.runtimes.features")

# Ids bound per statement: under SQLite's 32,766 and PostgreSQL's 65,535 parameter
# limits. A request with more ids than this takes one query per slice.
IDS_PER_QUERY = 10_000
IDS_PARAM = "ids"


class FeaturesOptions(BaseModel):
    """The declaration's ``features`` block."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sql: str  # file, relative to the model folder
    source: str  # SQLAlchemy URL; ${VAR:-default} expanded at load
    key: str  # the entity id column, and the request input carrying the ids
    preprocess: str | None = None  # fitted transformer (joblib), relative to the folder
    preprocess_sha256: str | None = None  # verified before the transformer is unpickled
    # The model's input columns, in order (default: the query's, the key left out).
    columns: list[str] | None = None


class FeatureSource:
    """The features database of one model: a pooled engine and the filtered query."""

    def __init__(self, model: str, options: FeaturesOptions, folder: Path):
        self.model = model
        self.options = options
        self.key = options.key
        self.folder = folder
        self.sql_path = folder / options.sql
        self.sql = ""
        self.url: sa.URL | None = None
        self.engine: sa.Engine | None = None
        self._query: sa.Select | None = None
        self.columns: list[str] = []  # as the query returns them, key included

    def open(self) -> None:
        """Read the SQL, create the engine, and run the query once for no ids: a wrong
        SQL, key column or source refuses the model at load, not at its first request."""
        if not self.sql_path.is_file():
            raise FileNotFoundError(
                f"model '{self.model}': features.sql {self.sql_path} does not exist; "
                "add it to the model folder or fix features.sql"
            )
        # A trailing ';' or '-- comment' would break the query it is wrapped in.
        self.sql = self.sql_path.read_text().strip().rstrip(";").rstrip() + "\n"
        self.url = resolve_url(self.options.source, self.folder)
        try:
            self.engine = create_engine(self.url, read_only=True)
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"model '{self.model}': features source {describe(self.url)}: {e}"
            ) from None
        if self.url.get_backend_name() == "sqlite":
            register_sqlite(self.engine)  # the hash a shard's rows are filtered on
        features = sa.text(self.sql).columns(sa.column(self.key)).subquery("features")
        self._query = (
            sa.select(sa.literal_column("*"))
            .select_from(features)
            .where(features.c[self.key].in_(sa.bindparam(IDS_PARAM, expanding=True)))
        )
        try:
            with self.engine.connect() as conn:
                self.columns = list(conn.execute(self._query, {IDS_PARAM: []}).keys())
        except SQLAlchemyError as e:
            self.close()
            raise RuntimeError(
                f"model '{self.model}': {self.options.sql} does not run on "
                f"{describe(self.url)}: {database_message(e)}; fix the query (it must select "
                f"a column {self.key!r}) or the source"
            ) from None
        if self.key not in self.columns:
            self.close()
            raise RuntimeError(
                f"model '{self.model}': {self.options.sql} returns the columns "
                f"{', '.join(self.columns)}; name the key column exactly {self.key!r}"
            )
        logger.info("model '%s': features from %s", self.model, describe(self.url))

    def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()
            self.engine = None

    def fetch(self, ids: Sequence[Any]) -> pd.DataFrame:
        """The features of the known ``ids``, one row each, in the order of ``ids``;
        the key column holds the ids as requested (unknown ids have no row)."""
        assert self.engine is not None and self.url is not None, "open() first"
        assert self._query is not None
        unique = list(dict.fromkeys(ids))
        rows: list[Sequence[Any]] = []
        try:
            with self.engine.connect() as conn:
                for start in range(0, len(unique), IDS_PER_QUERY):
                    chunk = unique[start : start + IDS_PER_QUERY]
                    rows.extend(conn.execute(self._query, {IDS_PARAM: chunk}).fetchall())
        except SQLAlchemyError as e:
            raise FeatureSourceError(
                f"model '{self.model}': features query on {describe(self.url)} failed: "
                f"{database_message(e)}"
            ) from None
        # Plain Python over the rows: for the few rows of an online request, pandas
        # operations would cost more than the query.
        at = self.columns.index(self.key)
        as_text = bool(unique) and isinstance(unique[0], str)
        found: dict[Any, tuple] = {}
        for row in rows:
            key = row[at]
            if as_text and not isinstance(key, str):
                # SQLite finds '42' in an INTEGER column and hands back 42: answer by
                # the id as the client wrote it.
                key = str(key)
            if key in found:
                raise ModelError(
                    f"model '{self.model}': {self.options.sql} returned several rows for "
                    f"{self.key} {key!r}; it must return one row per {self.key} "
                    f"(GROUP BY {self.key})"
                )
            found[key] = (*row[:at], key, *row[at + 1 :])
        # A database may match an id it spells otherwise (SQLite: '042' = 42); such a
        # row answers no requested id as written, and is left out.
        ordered = [found[k] for k in unique if k in found]
        return pd.DataFrame.from_records(ordered, columns=self.columns)

    def shard_sql(self, shard: tuple[int, int] = (0, 1)) -> str:
        """``features.sql``, filtered to shard (index, count) by the database
        (see ``modelyard.batch.shards``)."""
        assert self.engine is not None, "open() first"
        return shard_query(self.engine.dialect, self.sql, self.key, *shard)

    def iter_all(
        self, rows_per_chunk: int, shard: tuple[int, int] = (0, 1)
    ) -> Iterator[pd.DataFrame]:
        """Every row of ``features.sql`` (of one shard (index, count): the database
        filters them), in chunks of ``rows_per_chunk`` rows streamed from the database
        (memory stays bounded)."""
        assert self.engine is not None and self.url is not None, "open() first"
        sql = self.shard_sql(shard)
        try:
            with self.engine.connect() as conn:
                if self.url.get_backend_name() == "duckdb":
                    yield from _duckdb_chunks(conn, sql, rows_per_chunk)
                    return
                # stream_results: a server-side cursor where the driver has one, so
                # the database hands the rows over a chunk at a time.
                result = conn.execution_options(stream_results=True).execute(sa.text(sql))
                columns = list(result.keys())
                # The driver's own rows (plain tuples) make a DataFrame in two thirds
                # of the time SQLAlchemy's Row objects take.
                cursor, driver_error = result.cursor, conn.dialect.loaded_dbapi.Error
                # A server-side cursor's result has read its first row ahead (for the
                # columns): the first chunk goes through it, or that row is lost.
                first = [tuple(row) for row in result.fetchmany(rows_per_chunk)]
                if first:
                    yield pd.DataFrame.from_records(first, columns=columns)
                while len(first) == rows_per_chunk:
                    try:
                        rows = cursor.fetchmany(rows_per_chunk)
                    except driver_error as e:
                        raise DBAPIError(sql, None, e) from e
                    if not rows:
                        break
                    yield pd.DataFrame.from_records(rows, columns=columns)
        except SQLAlchemyError as e:
            raise FeatureSourceError(
                f"model '{self.model}': {self.options.sql} on {describe(self.url)} failed: "
                f"{database_message(e)}"
            ) from None

    def count(self, shard: tuple[int, int] = (0, 1)) -> int:
        """How many rows ``features.sql`` returns for a shard (for a run's progress)."""
        assert self.engine is not None, "open() first"
        with self.engine.connect() as conn:
            query = sa.text(f"SELECT COUNT(*) FROM ({self.shard_sql(shard)}) AS features")
            return conn.execute(query).scalar_one()


# DuckDB hands results over column by column: a chunk as a DataFrame straight from its
# vectors (of 2,048 rows) is ~10x faster than building it from row tuples.
DUCKDB_VECTOR_ROWS = 2048


def _duckdb_chunks(conn: sa.Connection, sql: str, rows_per_chunk: int) -> Iterator[pd.DataFrame]:
    import duckdb

    database = conn.connection.driver_connection
    assert database is not None
    try:
        database.execute("SET enable_progress_bar = false")  # it would draw on the terminal
        cursor = database.execute(sql)
        vectors = max(1, round(rows_per_chunk / DUCKDB_VECTOR_ROWS))
        while not (chunk := cursor.fetch_df_chunk(vectors)).empty:
            yield chunk
    except duckdb.Error as e:
        # As SQLAlchemy reports the errors of the drivers it calls itself.
        raise DBAPIError(sql, None, e) from e  # type: ignore[arg-type]
