"""Batch runs in-process (the same code the command runs) and the store's rules:
bad rows, shards one by one, declarations that no longer fit their table, schedules."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from modelyard.batch.progress import LogReporter
from modelyard.batch.run import BatchError, BatchJob, RunOptions, Shard, default_run_id
from modelyard.batch.schedule import Scheduler, next_firing
from modelyard.cli import main
from modelyard.store.connection import PredictionStore
from modelyard.store.runs import RunStatus
from modelyard.store.tables import IncompatibleTable, PredictionsSpec, StoreError, now, table_name
from tests.batch.conftest import (
    USERS,
    assert_matches,
    direct_scores,
    edit_declaration,
    latest,
    open_store,
    run_info,
    stored,
)
from tests.support.postgres import PostgresServer


@pytest.fixture
def job_env(monkeypatch: pytest.MonkeyPatch, sqlite_store: str) -> str:
    monkeypatch.setenv("PREDICTIONS_DB_URL", sqlite_store)
    return sqlite_store


def run(folder: Path, **options: object) -> object:
    return BatchJob(folder).run(RunOptions(bar=False, **options))  # type: ignore[arg-type]


# -- bad rows ----------------------------------------------------------------------------
def spoil(folder: Path, *user_ids: str) -> None:
    """Ages that are not numbers: the preprocess object cannot decode those users."""
    with sqlite3.connect(folder / "features.db") as db:
        for user_id in user_ids:
            db.execute("UPDATE users SET age = 'forty' WHERE user_id = ?", (user_id,))


def test_a_bad_row_fails_the_run_by_default_naming_it(folder: Path, job_env: str) -> None:
    spoil(folder, "u0001234")
    result = run(folder, run_id="strict")
    assert result.error is not None  # type: ignore[attr-defined]
    assert "'u0001234'" in result.error and "forty" in result.error  # type: ignore[attr-defined]
    assert "--max-bad-rows 0" in result.error  # type: ignore[attr-defined]
    assert run_info(job_env, "strict").status == RunStatus.FAILED  # type: ignore[union-attr]
    assert latest(job_env) is None


def test_bad_rows_within_the_policy_are_counted_and_recorded(folder: Path, job_env: str) -> None:
    expected = direct_scores(folder).drop(["u0000007", "u0004000"])
    spoil(folder, "u0000007", "u0004000")
    result = run(folder, run_id="lenient", max_bad_rows=2, chunk_rows=1000)
    assert result.error is None  # type: ignore[attr-defined]
    assert (result.rows, result.bad_rows) == (USERS - 2, 2)  # type: ignore[attr-defined]
    assert "2 bad rows" in result.summary()  # type: ignore[attr-defined]
    run_ = latest(job_env)
    assert run_ is not None and (run_.rows, run_.bad_rows) == (USERS - 2, 2)
    assert_matches(stored(job_env, "lenient"), expected)
    with sqlite3.connect(job_env.removeprefix("sqlite:///")) as db:
        bad = db.execute(
            "SELECT entity, error FROM modelyard_bad_rows WHERE run_id = 'lenient' ORDER BY entity"
        ).fetchall()
    assert [e for e, _ in bad] == ["u0000007", "u0004000"]
    assert all("forty" in error for _, error in bad)


def test_a_key_returned_twice_is_a_bad_row(folder: Path, job_env: str) -> None:
    sql = (folder / "features.sql").read_text()
    (folder / "features.sql").write_text(
        f"SELECT * FROM ({sql}) UNION ALL SELECT * FROM ({sql}) WHERE user_id = 'u0000001'"
    )
    result = run(folder, run_id="twice", chunk_rows=10_000)
    assert result.error is not None and "several rows for this user_id" in result.error  # type: ignore[attr-defined]
    result = run(folder, run_id="twice", chunk_rows=10_000, max_bad_rows=1)
    assert (result.rows, result.bad_rows, result.error) == (USERS, 1, None)  # type: ignore[attr-defined]


# -- shards ------------------------------------------------------------------------------
def test_shards_one_by_one_complete_the_run_with_the_last(folder: Path, job_env: str) -> None:
    run(folder, run_id="whole")
    sizes = []
    for index in range(3):
        result = run(folder, run_id="split", shard=Shard(index, 3))
        sizes.append(result.rows)  # type: ignore[attr-defined]
        info = run_info(job_env, "split")
        assert info is not None and info.shards_done == index + 1
        if index < 2:
            # Two shards of three: readers still see the unsharded run.
            assert info.status == RunStatus.RUNNING and latest(job_env).run_id == "whole"  # type: ignore[union-attr]
    assert latest(job_env).run_id == "split"  # type: ignore[union-attr]
    assert sum(sizes) == USERS and min(sizes) > USERS / 3 * 0.8  # a fair split
    assert_matches(stored(job_env, "split"), stored(job_env, "whole"))


def test_shards_are_a_stable_partition() -> None:
    keys = [f"u{i:07d}" for i in range(3000)] + list(range(1000))
    masks = [Shard(i, 3).mask(keys) for i in range(3)]
    assert (sum(m.astype(int) for m in masks) == 1).all()
    # The first 8 hex digits of MD5 of the key's text (0x341041ea for u0000000): the
    # same in every process, release and database, not Python's salted hash(); an int
    # key hashes as its digits.
    pinned = {"u0000000": 1, "u0000002": 0, "u0000004": 2, 42: 1, "42": 1, 7: 0, 9: 2}
    for key, shard in pinned.items():
        assert [bool(Shard(i, 3).mask([key])[0]) for i in range(3)].index(True) == shard


def test_a_run_keeps_its_shard_count(folder: Path, job_env: str) -> None:
    run(folder, run_id="two", shard=Shard(0, 2))
    with pytest.raises(StoreError, match=r"started with 2 shard\(s\), not 3"):
        run(folder, run_id="two", shard=Shard(1, 3))


# -- the store's tables ------------------------------------------------------------------
@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    postgres: PostgresServer = request.getfixturevalue("postgres")
    return postgres.create_database("batch_tables")


def test_an_incompatible_declaration_is_refused_naming_table_column_and_types(
    folder: Path, job_env: str
) -> None:
    run(folder, run_id="first")
    edit_declaration(
        folder,
        lambda t: t.replace("male_percentile: FP32, female", "male_percentile: FP64, female"),
    )
    with pytest.raises(IncompatibleTable) as info:
        run(folder, run_id="second")
    message = str(info.value)
    assert table_name("gender", "0.1.0") in message
    assert "column 'male_percentile' is FP16/FP32 (REAL) in the table but FP64 (DOUBLE)" in message
    assert "bump the model's version" in message and "migrate" in message
    # The fix it names works: a new version gets a table of its own.
    edit_declaration(folder, lambda t: t.replace("version: 0.1.0", "version: 0.2.0"))
    assert run(folder, run_id="second").error is None  # type: ignore[attr-defined]
    assert latest(job_env).version == "0.2.0"  # type: ignore[union-attr]


def test_a_removed_column_is_refused_through_the_command(folder: Path, job_env: str) -> None:
    run(folder, run_id="first")
    edit_declaration(folder, lambda t: t.replace(", female_percentile: FP32}", "}"))
    result = CliRunner().invoke(main, ["batch", "run", str(folder)])
    assert result.exit_code == 1
    assert "column 'female_percentile', FP16/FP32 (REAL), is in the table but no longer" in (
        result.stderr
    )


def test_store_tables_added_and_changed_columns(store_url: str) -> None:
    store = PredictionStore(__import__("sqlalchemy").make_url(store_url))
    try:
        spec = PredictionsSpec.of("m", "1", "id", {"id": "INT64", "score": "FP32"})
        table = store.tables.ensure(spec)
        store.ledger.start_shard(spec, "r1", 0, 1)
        frame = pd.DataFrame({"id": [1, 2], "score": pd.array([0.5, 1.5], dtype="float32")})
        store.predictions.write(table, spec, "r1", frame, now())
        store.ledger.finish_shard(spec, "r1", 0, 2, 0)
        # A new nullable column is added; the earlier run reads NULL there.
        wider = PredictionsSpec.of(
            "m", "1", "id", {"id": "INT64", "score": "FP32", "band": "BYTES"}
        )
        table = store.tables.ensure(wider)
        assert "band" in store.tables.reflect(table.name).c  # type: ignore[union-attr]
        run_ = store.ledger.latest_run("m")
        assert run_ is not None
        rows = store.predictions.read(table, run_, "id", [1, 2, 3], ["score", "band"])
        assert sorted((r[0], r[1], r[2]) for r in rows) == [(1, 0.5, None), (2, 1.5, None)]
        # A changed key type is not.
        with pytest.raises(IncompatibleTable, match="column 'id' is"):
            store.tables.ensure(
                PredictionsSpec.of("m", "1", "id", {"id": "BYTES", "score": "FP32"})
            )
        with pytest.raises(StoreError, match="may not be named 'run_id'"):
            PredictionsSpec.of("m", "1", "id", {"run_id": "BYTES"})
    finally:
        store.close()


def test_every_datatype_round_trips_through_the_store(store_url: str) -> None:
    """What a chunk holds comes back as written: each V2 datatype, None as NULL, NaN,
    text with quotes, separators and non-ASCII, and a rewrite of the same rows."""
    import numpy as np

    columns = {
        "id": "INT64", "flag": "BOOL", "small": "INT8", "count": "UINT32", "big": "INT64",
        "half": "FP16", "score": "FP32", "exact": "FP64", "label": "BYTES",
    }  # fmt: skip
    frame = pd.DataFrame(
        {
            "id": np.array([3, 1, 2], dtype=np.int64),
            "flag": np.array([True, False, True]),
            "small": np.array([-128, 0, 127], dtype=np.int8),
            "count": np.array([0, 7, 4_294_967_295], dtype=np.uint32),
            "big": np.array([-(2**63), 0, 2**53 + 1], dtype=np.int64),
            "half": np.array([0.5, -1.25, np.nan], dtype=np.float16),
            "score": np.array([0.1, np.nan, 3.4e38], dtype=np.float32),
            "exact": np.array([1 / 3, -0.0, 1e-300]),
            "label": np.array(['say "hi", \\ ok', None, "éléphant ✓ [1,2]"], dtype=object),
        }
    )
    store = PredictionStore(__import__("sqlalchemy").make_url(store_url))
    try:
        spec = PredictionsSpec.of("m", "1", "id", columns)
        table = store.tables.ensure(spec)
        store.ledger.start_shard(spec, "r1", 0, 1)
        for _ in range(2):  # the second write updates the same rows
            assert store.predictions.write(table, spec, "r1", frame, now()) == 3
        store.ledger.finish_shard(spec, "r1", 0, 3, 0)
        run_ = store.ledger.latest_run("m")
        assert run_ is not None
        values = spec.values
        rows = {
            r[0]: r[1 : 1 + len(values)]
            for r in store.predictions.read(table, run_, "id", [1, 2, 3], values)
        }
        assert len(rows) == 3
        for i, key in enumerate(frame["id"]):
            got = dict(zip(values, rows[key], strict=True))
            for name in values:
                want = frame[name].iloc[i]
                if name == "label" or want is None:
                    assert got[name] == want, (name, got[name], want)
                elif frame[name].dtype.kind == "f" and np.isnan(want):
                    # NULL in SQLite, which holds no NaN; NaN in PostgreSQL.
                    assert got[name] is None or np.isnan(got[name]), (name, got[name])
                else:  # as the declared type holds it
                    assert frame[name].dtype.type(got[name]) == want, (name, got[name], want)
        assert store.predictions.count(table, run_) == (3, 3)
    finally:
        store.close()


def test_a_rerun_of_a_complete_run_hides_it_until_it_completes_again(store_url: str) -> None:
    store = PredictionStore(__import__("sqlalchemy").make_url(store_url))
    try:
        spec = PredictionsSpec.of("m", "1", "id", {"id": "BYTES", "score": "FP64"})
        store.tables.ensure(spec)
        for run_id in ("a", "b"):
            store.ledger.start_shard(spec, run_id, 0, 1)
            store.ledger.finish_shard(spec, run_id, 0, 0, 0)
        assert store.ledger.latest_run("m").run_id == "b"  # type: ignore[union-attr]
        store.ledger.start_shard(spec, "b", 0, 1)  # "b" is being written again
        assert store.ledger.latest_run("m").run_id == "a"  # type: ignore[union-attr]
        store.ledger.fail_shard(spec, "b", 0, "boom")
        assert store.ledger.latest_run("m").run_id == "a"  # type: ignore[union-attr]
        assert store.ledger.run("m", "1", "b").error == "shard 0: boom"  # type: ignore[union-attr]
        store.ledger.start_shard(spec, "b", 0, 1)
        store.ledger.finish_shard(spec, "b", 0, 0, 0)
        assert store.ledger.latest_run("m").run_id == "b"  # type: ignore[union-attr]
    finally:
        store.close()


def test_an_unsupported_store_is_named() -> None:
    with pytest.raises(StoreError, match="mysql is not supported; use a sqlite"):
        PredictionStore(__import__("sqlalchemy").make_url("mysql://u:p@h/db"))


def test_a_folder_that_is_not_one_is_named(tmp_path: Path) -> None:
    with pytest.raises(BatchError, match="not a model folder"):
        BatchJob(tmp_path)


# -- schedule and progress -------------------------------------------------------------
def test_next_firing_is_utc_cron() -> None:
    at = datetime(2025, 1, 1, 5, 0, tzinfo=UTC)
    assert next_firing("0 3 * * *", at) == datetime(2025, 1, 2, 3, 0, tzinfo=UTC)
    assert next_firing("@hourly", at) == datetime(2025, 1, 1, 6, 0, tzinfo=UTC)


def test_schedule_runs_at_the_next_firing_named_after_it(folder: Path, job_env: str) -> None:
    clock = [datetime(2025, 1, 1, 2, 59, 58, tzinfo=UTC)]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += timedelta(seconds=seconds)

    lines: list[str] = []
    scheduler = Scheduler(folder, RunOptions(bar=False), clock=lambda: clock[0], sleep=sleep)
    assert scheduler.loop(once=True, report=lines.append) == 0
    assert slept == [2.0]
    assert lines[0] == "next run at 2025-01-01T03:00:00+00:00 ('0 3 * * *', UTC)"
    assert "run 20250101T030000Z" in lines[1] and "run complete" in lines[1]
    assert latest(job_env).run_id == "20250101T030000Z"  # type: ignore[union-attr]


def test_schedule_now_once_through_the_command(folder: Path, job_env: str) -> None:
    result = CliRunner().invoke(main, ["batch", "schedule", str(folder), "--now", "--once"])
    assert result.exit_code == 0, result.output
    assert "run complete" in result.stdout
    assert latest(job_env) is not None


def test_schedule_needs_a_schedule(folder: Path, job_env: str) -> None:
    edit_declaration(folder, lambda t: t.replace('  schedule: "0 3 * * *"\n', ""))
    with pytest.raises(BatchError, match=r"declares no predictions\.schedule"):
        Scheduler(folder, RunOptions())


def test_log_progress_every_few_seconds_with_an_eta(caplog: pytest.LogCaptureFixture) -> None:
    clock = [0.0]
    report = LogReporter("gender r1 0/1", every=10, clock=lambda: clock[0])
    report.total(1000)
    with caplog.at_level("INFO", logger="modelyard.batch"):
        clock[0] = 5.0
        report.update(100, 100, 0)  # too soon: no line
        clock[0] = 10.0
        report.update(250, 249, 1)
    assert [r.getMessage() for r in caplog.records] == [
        "gender r1 0/1: 250 rows read, 249 scored, 1 bad, 25 rows/s, 25% of 1,000, ETA 30 s"
    ]


def test_default_run_id_is_the_utc_time() -> None:
    assert default_run_id(datetime(2025, 6, 1, 3, 0, 7, tzinfo=UTC)) == "20250601T030007Z"


def test_progress_bar_on_request(folder: Path, job_env: str) -> None:
    result = CliRunner().invoke(main, ["batch", "run", str(folder), "--progress"])
    assert result.exit_code == 0, result.output
    assert "rows/s" in result.stderr and "run complete" in result.stdout
    assert open_store(job_env).ledger.latest_run("gender") is not None
