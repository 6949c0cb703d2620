"""The quality tables, in the model's prediction store (same database, same engine):

- ``modelyard_labels``: the ground truth, one label per (model, kind, key, row). ``kind``
  is ``entity`` (``key`` is an entity id of batch predictions, ``row`` 0) or
  ``request`` (``key`` is the ``id`` of an online request, ``row`` the row of its
  batch). A different label observed later replaces the stored one; the same label
  again changes nothing (it keeps its first observation), so loads and retried
  requests are idempotent. ``received_at`` is when the label last
  changed: what tells the metrics which windows to recompute.
- ``modelyard_payloads``: sampled online requests and responses (JSON, size-capped),
  by model and request id.
- ``modelyard_quality_windows`` and ``modelyard_quality_metrics``: the metrics of each
  model version per window (day, week), with their counts and when they were computed.
- ``modelyard_quality_state``: per model, up to when the metrics have seen the labels,
  runs and payloads (see ``modelyard.quality.evaluate``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd
import sqlalchemy as sa

from modelyard.declarations.monitoring import QualityConfig
from modelyard.store.connection import PredictionStore
from modelyard.store.tables import TIMESTAMP, dialect_insert, now, utc

LABELS_TABLE = "modelyard_labels"
PAYLOADS_TABLE = "modelyard_payloads"
WINDOWS_TABLE = "modelyard_quality_windows"
METRICS_TABLE = "modelyard_quality_metrics"
STATE_TABLE = "modelyard_quality_state"
ENTITY, REQUEST = "entity", "request"
# Keys looked up per statement (SQLite allows 32,766 bound parameters).
KEYS_PER_QUERY = 500


@dataclass(frozen=True)
class LoadResult:
    received: int  # labels given (after keeping the latest of each key)
    changed: int  # new, or a different label replacing an older observation
    duplicates: int  # rows of the input superseded by a later one for the same key

    def summary(self) -> str:
        text = f"{self.received:,} labels: {self.changed:,} new or changed"
        unchanged = self.received - self.changed
        if unchanged:
            text += f", {unchanged:,} already stored (or older than the stored label)"
        if self.duplicates:
            text += f"; {self.duplicates:,} repeated keys (the latest observed_at kept)"
        return text


def _tables(metadata: sa.MetaData) -> dict[str, sa.Table]:
    text, ts = sa.Text, TIMESTAMP
    model: list[sa.Column[Any]] = [sa.Column("model", text, primary_key=True)]
    window: list[sa.Column[Any]] = [
        sa.Column("version", text, primary_key=True),
        sa.Column("window", text, primary_key=True),
        sa.Column("start", ts, primary_key=True),
    ]
    return {
        LABELS_TABLE: sa.Table(
            LABELS_TABLE,
            metadata,
            *[c._copy() for c in model],
            sa.Column("kind", text, primary_key=True),
            sa.Column("key", text, primary_key=True),
            sa.Column("row", sa.Integer, primary_key=True),
            sa.Column("label", text, nullable=False),
            sa.Column("observed_at", ts, nullable=False),
            sa.Column("received_at", ts, nullable=False),
            sa.Index(f"{LABELS_TABLE}_observed", "model", "kind", "observed_at"),
            sa.Index(f"{LABELS_TABLE}_received", "model", "received_at"),
        ),
        PAYLOADS_TABLE: sa.Table(
            PAYLOADS_TABLE,
            metadata,
            *[c._copy() for c in model],
            sa.Column("request_id", text, primary_key=True),
            sa.Column("version", text, nullable=False),
            sa.Column("logged_at", ts, nullable=False),
            sa.Column("request", text, nullable=False),
            sa.Column("response", text, nullable=False),
            sa.Column("truncated", sa.Boolean, nullable=False),
            sa.Index(f"{PAYLOADS_TABLE}_logged", "model", "logged_at"),
        ),
        WINDOWS_TABLE: sa.Table(
            WINDOWS_TABLE,
            metadata,
            *[c._copy() for c in model],
            *[c._copy() for c in window],
            sa.Column("samples", sa.BigInteger, nullable=False),
            sa.Column("inputs", text, nullable=False),  # what it was computed from
            sa.Column("computed_at", ts, nullable=False),
        ),
        METRICS_TABLE: sa.Table(
            METRICS_TABLE,
            metadata,
            *[c._copy() for c in model],
            *[c._copy() for c in window],
            sa.Column("metric", text, primary_key=True),
            sa.Column("class", text, primary_key=True),  # "" for the model as a whole
            sa.Column("value", sa.Double, nullable=True),  # NULL: undefined (one class only)
            sa.Column("samples", sa.BigInteger, nullable=False),
        ),
        STATE_TABLE: sa.Table(
            STATE_TABLE,
            metadata,
            *[c._copy() for c in model],
            sa.Column("seen_until", ts, nullable=False),
        ),
    }


def upsert(dialect: str, table: sa.Table) -> Any:
    """INSERT ... ON CONFLICT (primary key) DO UPDATE every other column."""
    stmt = dialect_insert(dialect, table)
    keys = [c.name for c in table.primary_key]
    return stmt.on_conflict_do_update(
        index_elements=keys,
        set_={c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys},
    )


class QualityStore:
    """The quality tables of one prediction store."""

    def __init__(self, store: PredictionStore):
        self.store = store
        self.engine = store.engine
        self.dialect = store.dialect
        self.metadata = sa.MetaData()
        tables = _tables(self.metadata)
        self.labels = tables[LABELS_TABLE]
        self.payloads = tables[PAYLOADS_TABLE]
        self.windows = tables[WINDOWS_TABLE]
        self.metrics = tables[METRICS_TABLE]
        self.state = tables[STATE_TABLE]
        self._ready = False

    @classmethod
    def open(cls, config: QualityConfig, writer: bool = True) -> QualityStore:
        return cls(PredictionStore.open(config.store, config.folder, writer=writer))

    def describe(self) -> str:
        return self.store.describe()

    def close(self) -> None:
        self.store.close()

    def errors(self, doing: str) -> AbstractContextManager[None]:
        """Database errors as a StoreError naming the store (never its password)."""
        return self.store.errors(doing)

    def ensure(self) -> QualityStore:
        """Create the quality tables if missing (another process may race us to it)."""
        if self._ready:
            return self
        with self.errors("creating the quality tables"):
            try:
                self.metadata.create_all(self.engine, checkfirst=True)
            except (sa.exc.ProgrammingError, sa.exc.IntegrityError, sa.exc.OperationalError):
                with self.engine.connect() as conn:
                    present = set(sa.inspect(conn).get_table_names())
                if not set(self.metadata.tables) <= present:
                    raise
        self._ready = True
        return self

    def exists(self) -> bool:
        """Whether the database holds the quality tables (without creating anything)."""
        with self.errors("reading its tables"), self.engine.connect() as conn:
            return sa.inspect(conn).has_table(LABELS_TABLE)

    # -- labels ------------------------------------------------------------------------
    def write_labels(self, model: str, frame: pd.DataFrame) -> LoadResult:
        """Store ``frame`` (kind, key, row, label, observed_at: tz-aware UTC) in one
        transaction; a key already holding the same label, or a later observation, is
        left as is."""
        self.ensure()
        total = len(frame)
        frame = frame.sort_values("observed_at", kind="stable").drop_duplicates(
            ["kind", "key", "row"], keep="last"
        )
        received_at = now()
        changed = 0
        t = self.labels.c
        with self.errors(f"writing labels of model '{model}'"), self.engine.begin() as conn:
            for kind, rows in frame.groupby("kind", sort=False):
                rows = rows.set_index(["key", "row"])
                keys = list(dict.fromkeys(rows.index.get_level_values("key")))
                stored: dict[tuple[str, int], tuple[str, datetime]] = {}
                for part in _chunks(keys, KEYS_PER_QUERY):
                    for r in conn.execute(
                        sa.select(t.key, t.row, t.label, t.observed_at).where(
                            t.model == model, t.kind == kind, t.key.in_(part)
                        )
                    ):
                        stored[(r.key, r.row)] = (r.label, utc(r.observed_at))
                new = []
                for (key, row), label, observed in zip(
                    rows.index, rows["label"], rows["observed_at"], strict=True
                ):
                    observed = observed.to_pydatetime()
                    old = stored.get((key, int(row)))
                    if old is not None and (old[0] == label or old[1] > observed):
                        continue  # the same truth (kept from its first observation), or older
                    new.append(
                        dict(model=model, kind=kind, key=str(key), row=int(row), label=label,
                             observed_at=observed, received_at=received_at)
                    )  # fmt: skip
                if new:
                    conn.execute(upsert(self.dialect, self.labels), new)
                changed += len(new)
        return LoadResult(received=len(frame), changed=changed, duplicates=total - len(frame))

    def label_count(self, model: str) -> int:
        with self.errors("reading labels"), self.engine.connect() as conn:
            return conn.execute(
                sa.select(sa.func.count()).where(self.labels.c.model == model)
            ).scalar_one()

    # -- payloads ----------------------------------------------------------------------
    def write_payloads(self, rows: Sequence[dict[str, Any]]) -> None:
        """Upsert logged payloads (a client reusing a request id keeps the last)."""
        if not rows:
            return
        self.ensure()
        with self.errors("writing payloads"), self.engine.begin() as conn:
            conn.execute(upsert(self.dialect, self.payloads), list(rows))

    # -- state -------------------------------------------------------------------------
    def seen_until(self, model: str) -> datetime | None:
        with self.errors("reading the quality state"), self.engine.connect() as conn:
            value = conn.execute(
                sa.select(self.state.c.seen_until).where(self.state.c.model == model)
            ).scalar_one_or_none()
        return utc(value) if value is not None else None


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
