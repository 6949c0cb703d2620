"""A prediction store: batch predictions, the runs that wrote them and the quality
tables beside them, through SQLAlchemy Core, in a SQLite file (the embedded default)
or PostgreSQL. Its tables are in ``modelyard.store.tables``, its runs in
``modelyard.store.runs``, the rows in ``modelyard.store.predictions``."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL

from modelyard.store.databases import describe, resolve_url
from modelyard.store.predictions import Predictions
from modelyard.store.runs import RunInfo, RunLedger
from modelyard.store.tables import (
    MODEL_COLUMN,
    RUN_COLUMN,
    VERSION_COLUMN,
    Bookkeeping,
    StoreError,
    Tables,
    errors,
)

# SQLite: how long a writer waits for another (a shard of the same run) to commit.
SQLITE_BUSY_TIMEOUT_S = 60
# Dialects with INSERT ... ON CONFLICT DO UPDATE.
DIALECTS = ("sqlite", "postgresql")
# SQLite: the page size of a new store (see _engine).
SQLITE_PAGE_SIZE = 16384


class PredictionStore:
    """One store (a database URL) and its parts: ``tables`` (made and checked),
    ``ledger`` (the runs) and ``predictions`` (their rows). ``writer`` engines take
    SQLite's write lock when a transaction begins, so concurrent shards queue instead
    of deadlocking."""

    def __init__(self, url: URL, writer: bool = True):
        self.url = url
        self.dialect = url.get_backend_name()
        if self.dialect not in DIALECTS:
            raise StoreError(
                f"prediction store {self.describe()}: {self.dialect} is not supported; "
                "use a sqlite:/// file or a postgresql:// database"
            )
        bookkeeping = Bookkeeping.define()
        self.runs = bookkeeping.runs  # the table the quality metrics join on
        self.engine = self._engine(writer)
        self.tables = Tables(self.engine, bookkeeping)
        self.ledger = RunLedger(self.engine, bookkeeping)
        self.predictions = Predictions(self.engine)

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

    def keep_runs(self, model: str, keep: int) -> list[RunInfo]:
        """Drop the rows and records of the runs of ``model`` beyond the ``keep`` complete
        ones that finished last (see ``RunLedger.expired``); each run in one transaction.
        Returns the runs dropped."""
        dropped = self.ledger.expired(model, keep)
        for run in dropped:
            rows = sa.table(run.table, sa.column(MODEL_COLUMN), sa.column(VERSION_COLUMN),
                            sa.column(RUN_COLUMN))  # fmt: skip
            with errors(self.engine, f"dropping run {run.run_id}"), self.engine.begin() as conn:
                if sa.inspect(conn).has_table(run.table):
                    conn.execute(
                        rows.delete().where(
                            rows.c[MODEL_COLUMN] == run.model,
                            rows.c[VERSION_COLUMN] == run.version,
                            rows.c[RUN_COLUMN] == run.run_id,
                        )
                    )
                self.ledger.forget(conn, run)
        return dropped

    def close(self) -> None:
        self.engine.dispose()

    def errors(self, doing: str) -> AbstractContextManager[None]:
        """Database errors as a StoreError naming the store (never its password)."""
        return errors(self.engine, doing)
