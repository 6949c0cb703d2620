"""The store at scale: PostgreSQL writes through COPY into a staging table and one
upsert, with the same rows as the row-by-row INSERT; runs dropped by keep_runs."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from modelyard.store.connection import PredictionStore
from modelyard.store.predictions import Predictions
from modelyard.store.tables import PredictionsSpec, now
from tests.batch.conftest import database_url
from tests.support.postgres import PostgresServer

SPEC = PredictionsSpec.of(
    "m", "1", "id", {"id": "BYTES", "score": "FP32", "label": "INT64", "note": "BYTES"}
)


def frame(rows: int, offset: float = 0.0) -> pd.DataFrame:
    scores = np.arange(rows, dtype=np.float32) / 7 + np.float32(offset)
    scores[3] = np.nan
    notes = [f"n{i}" for i in range(rows)]
    notes[5] = None  # type: ignore[call-overload]
    return pd.DataFrame(
        {"id": [f"e{i}" for i in range(rows)], "score": scores,
         "label": np.arange(rows, dtype=np.int64), "note": notes}
    )  # fmt: skip


def rows(store: PredictionStore, run_id: str) -> list[tuple]:
    with store.engine.connect() as conn:
        found = conn.execute(
            sa.text(f"SELECT id, score, label, note FROM {SPEC.table_name} WHERE run_id = :r"),
            {"r": run_id},
        ).all()
    return [tuple("nan" if isinstance(v, float) and math.isnan(v) else v for v in r) for r in found]


def test_postgresql_copy_writes_what_row_by_row_inserts_write(postgres: PostgresServer) -> None:
    store = PredictionStore(sa.make_url(postgres.create_database("store_copy")))
    try:
        table = store.tables.ensure(SPEC)
        assert store.predictions.copy and store.predictions.direct
        by_row = Predictions(store.engine, copy=False)
        staged = Predictions(store.engine, direct=False)
        writers = ((store.predictions, "copy"), (staged, "staged"), (by_row, "insert"))
        for writer, run_id in writers:
            # New rows (COPY straight into the table, where the writer does).
            assert writer.write(table, SPEC, run_id, frame(600), now()) == 600
            # Some there already (a rerun, a key in two chunks): the COPY is refused by
            # the primary key and the chunk upserted, one row per entity, the new values.
            writer.write(table, SPEC, run_id, frame(1000, offset=1.0), now())
        copied, inserted = rows(store, "copy"), rows(store, "insert")
        assert len(copied) == 1000 and copied == inserted == rows(store, "staged")
        by_id = {r[0]: r for r in copied}
        assert by_id["e3"][1] == "nan" and by_id["e5"][3] is None  # NaN stays NaN; None, NULL
        assert by_id["e1"][1] == np.float32(1 / 7) + np.float32(1.0)
    finally:
        store.close()


def test_sqlite_inserts_new_rows_and_upserts_rows_there_already(tmp_path: Path) -> None:
    store = PredictionStore(sa.make_url(f"sqlite:///{tmp_path}/p.db"))
    try:
        table = store.tables.ensure(SPEC)
        assert store.predictions.direct
        upserting = Predictions(store.engine, direct=False)
        for writer, run_id in ((store.predictions, "insert"), (upserting, "upsert")):
            assert writer.write(table, SPEC, run_id, frame(600), now()) == 600
            # Rows 0-599 there already: the INSERT is refused by the primary key and
            # backed out whole, and the same transaction upserts the chunk.
            assert writer.write(table, SPEC, run_id, frame(1000, offset=1.0), now()) == 1000
        inserted = rows(store, "insert")
        assert len(inserted) == 1000 and inserted == rows(store, "upsert")
        by_id = {r[0]: r for r in inserted}
        assert by_id["e1"][1] == np.float32(1 / 7) + np.float32(1.0)  # the new value
        assert by_id["e3"][1] is None and by_id["e5"][3] is None  # SQLite has no NaN: NULL
    finally:
        store.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PredictionStore]:
    url = database_url(request, tmp_path, request.param, "keep")
    opened = PredictionStore(sa.make_url(url))
    try:
        yield opened
    finally:
        opened.close()


def test_keep_runs_drops_older_runs_never_the_latest_complete(store: PredictionStore) -> None:
    table = store.tables.ensure(SPEC)

    def run(run_id: str, status: str) -> None:
        store.ledger.start_shard(SPEC, run_id, 0, 1)
        store.predictions.write(table, SPEC, run_id, frame(10), now())
        if status == "complete":
            store.ledger.finish_shard(SPEC, run_id, 0, 10, 0)
        elif status == "failed":
            store.ledger.fail_shard(SPEC, run_id, 0, "boom", 10)

    for run_id, status in [("r1", "complete"), ("f1", "failed"), ("r2", "complete"),
                           ("r3", "complete"), ("going", "running")]:  # fmt: skip
        run(run_id, status)
    with pytest.raises(ValueError, match="keep at least the latest"):
        store.keep_runs("m", 0)
    dropped = store.keep_runs("m", 2)
    assert sorted(r.run_id for r in dropped) == ["f1", "r1"]
    assert {r.run_id for r in store.ledger.runs_of("m")} == {"r2", "r3", "going"}
    assert [len(rows(store, r)) for r in ("r1", "f1", "r2", "r3", "going")] == [0, 0, 10, 10, 10]
    dropped = store.keep_runs("m", 1)
    assert [r.run_id for r in dropped] == ["r2"]
    latest = store.ledger.latest_run("m")
    assert latest is not None and latest.run_id == "r3" and len(rows(store, "r3")) == 10
    assert store.keep_runs("m", 1) == []
