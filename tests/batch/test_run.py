"""`modelyard batch run` end to end: real subprocesses, a real SQLite file and a real
PostgreSQL server, every stored row checked against the predictor pipeline itself."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from modelyard.store.runs import RunStatus
from modelyard.store.tables import table_name
from tests.batch.conftest import (
    KEY,
    MODEL,
    USERS,
    VERSION,
    assert_matches,
    batch,
    direct_scores,
    latest,
    ok,
    run_info,
    stored,
)
from tests.support.postgres import PostgresServer
from tests.support.server import MODELYARD, free_port


def wait_for_rows(store: str, run_id: str, rows: int, proc: subprocess.Popen) -> None:
    """Until ``run_id`` has ``rows`` rows in the (SQLite) store, the process running."""
    db = store.removeprefix("sqlite:///")
    written, deadline = 0, time.monotonic() + 60
    while written < rows:
        assert proc.poll() is None, f"exited before it was cut short:\n{proc.communicate()}"
        assert time.monotonic() < deadline, f"{written} rows written in 60 s"
        if Path(db).exists():
            with sqlite3.connect(db) as conn:
                table = table_name(MODEL, VERSION)
                if conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (table,)).fetchone():
                    written = conn.execute(
                        f"SELECT COUNT(*) FROM {table} WHERE run_id = ?", (run_id,)
                    ).fetchone()[0]
        time.sleep(0.02)


def test_full_run_into_sqlite(folder: Path, sqlite_store: str) -> None:
    out = ok(batch(folder, sqlite_store, "--run-id", "nightly-1"))
    assert f"run nightly-1 shard 0/1: {USERS:,} rows" in out
    assert "run complete" in out and "0 bad rows" in out
    run = latest(sqlite_store)
    assert run is not None and run.run_id == "nightly-1"
    assert (run.status, run.rows, run.shards_done, run.bad_rows) == ("complete", USERS, 1, 0)
    rows = stored(sqlite_store, "nightly-1")
    assert_matches(rows, direct_scores(folder))
    assert set(rows["model"]) == {MODEL} and set(rows["version"]) == {VERSION}
    assert rows["predicted_at"].notna().all()


def test_full_run_into_postgresql(folder: Path, postgres: PostgresServer) -> None:
    url = postgres.create_database("batch_full")
    # The default run id is the time; the command says which it chose.
    out = ok(batch(folder, url, "--chunk-rows", "700"))
    run = latest(url)
    assert run is not None and f"run {run.run_id} " in out
    assert run.run_id[:8].isdigit() and run.run_id.endswith("Z")
    assert_matches(stored(url, run.run_id), direct_scores(folder))


def test_killed_run_is_never_the_latest_and_a_rerun_completes_it(
    folder: Path, sqlite_store: str
) -> None:
    ok(batch(folder, sqlite_store, "--run-id", "monday"))
    env = {**os.environ, "PREDICTIONS_DB_URL": sqlite_store}
    # Tiny chunks: thousands of commits, so the kill lands half way for sure.
    proc = subprocess.Popen(
        [MODELYARD, "batch", "run", str(folder), "--run-id", "tuesday", "--chunk-rows", "5"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    wait_for_rows(sqlite_store, "tuesday", 200, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)

    half = run_info(sqlite_store, "tuesday")
    assert half is not None and half.status == RunStatus.RUNNING  # killed: no chance to say
    assert 200 <= len(stored(sqlite_store, "tuesday")) < USERS
    # Readers still get Monday's complete run, not half of Tuesday's.
    assert latest(sqlite_store).run_id == "monday"  # type: ignore[union-attr]

    out = ok(batch(folder, sqlite_store, "--run-id", "tuesday"))
    assert "run complete" in out
    run = latest(sqlite_store)
    assert run is not None and (run.run_id, run.rows) == ("tuesday", USERS)
    rows = stored(sqlite_store, "tuesday")
    assert len(rows) == USERS  # exactly one row per entity
    assert_matches(rows, direct_scores(folder))


def test_shards_run_in_parallel_equal_one_unsharded_run(
    folder: Path, postgres: PostgresServer
) -> None:
    url = postgres.create_database("batch_shards")
    # Three pods of an Indexed Job: the same run id, JOB_COMPLETION_INDEX 0..2, at once,
    # on an empty database (they race to create the tables too).
    procs = [
        subprocess.Popen(
            [MODELYARD, "batch", "run", str(folder), "--run-id", "split", "--shards", "3"],
            env={**os.environ, "PREDICTIONS_DB_URL": url, "JOB_COMPLETION_INDEX": str(i)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(3)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], "\n".join(outputs)
    # Whichever shard finished last completed the run.
    assert sum("run complete" in o for o in outputs) == 1, outputs
    run = run_info(url, "split")
    assert run is not None and (run.status, run.shards, run.shards_done) == ("complete", 3, 3)
    assert run.rows == USERS
    ok(batch(folder, url, "--run-id", "whole"))
    whole, split = stored(url, "whole"), stored(url, "split")
    assert_matches(split, whole)


def test_source_down_fails_naming_it_and_commits_nothing(folder: Path, sqlite_store: str) -> None:
    port = free_port()  # nothing listens there
    source = f"postgresql://profiles:s3cret@127.0.0.1:{port}/features"
    result = batch(folder, sqlite_store, "--run-id", "down", env={"FEATURES_DB_URL": source})
    assert result.returncode == 1, result.stdout + result.stderr
    said = result.stdout + result.stderr
    assert f"127.0.0.1:{port}/features" in said and "FAILED" in said
    assert "s3cret" not in said
    run = run_info(sqlite_store, "down")
    assert run is not None and run.status == RunStatus.FAILED and "127.0.0.1" in (run.error or "")
    assert latest(sqlite_store) is None
    assert stored(sqlite_store, "down").empty


def test_store_down_fails_naming_it(folder: Path) -> None:
    port = free_port()
    store = f"postgresql://batch:hunter2@127.0.0.1:{port}/predictions"
    result = batch(folder, store)
    assert result.returncode == 1
    assert f"prediction store postgresql+psycopg://batch:***@127.0.0.1:{port}" in result.stderr
    assert "hunter2" not in result.stdout + result.stderr


def test_a_query_that_fails_fails_the_run_naming_the_source(
    folder: Path, sqlite_store: str
) -> None:
    sql = (folder / "features.sql").read_text()
    (folder / "features.sql").write_text(sql.replace("u.country", "u.region"))
    result = batch(folder, sqlite_store, "--run-id", "typo")
    assert result.returncode == 1
    assert "features.sql does not run on sqlite:///" in result.stdout
    assert "no such column: u.region" in result.stdout
    assert run_info(sqlite_store, "typo").status == RunStatus.FAILED  # type: ignore[union-attr]
    assert latest(sqlite_store) is None


def test_the_source_going_away_half_way_fails_the_run(
    folder: Path, sqlite_store: str, postgres: PostgresServer
) -> None:
    # The features as one PostgreSQL table, streamed through a server-side cursor.
    source = postgres.create_database("features_flaky")
    with sqlite3.connect(folder / "features.db") as db:
        features = pd.read_sql_query((folder / "features.sql").read_text(), db)
    engine = sa.create_engine(source)
    features.to_sql("user_features", engine, index=False)
    (folder / "features.sql").write_text("SELECT * FROM user_features ORDER BY user_id\n")
    proc = subprocess.Popen(
        [MODELYARD, "batch", "run", str(folder), "--run-id", "cut", "--chunk-rows", "5"],
        env={**os.environ, "PREDICTIONS_DB_URL": sqlite_store, "FEATURES_DB_URL": source},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_for_rows(sqlite_store, "cut", 100, proc)
    with engine.connect() as conn:  # the database drops the batch job's connections
        conn.execute(
            sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = 'features_flaky' AND pid <> pg_backend_pid()"
            )
        )
    engine.dispose()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, out + err
    assert f"features.sql on {source} failed" in out
    assert "FAILED" in out
    assert run_info(sqlite_store, "cut").status == RunStatus.FAILED  # type: ignore[union-attr]
    assert 100 <= len(stored(sqlite_store, "cut")) < USERS
    assert latest(sqlite_store) is None


def test_unknown_options_and_bad_shards_are_usage_errors(folder: Path, sqlite_store: str) -> None:
    result = batch(folder, sqlite_store, "--shard", "3/3")
    assert result.returncode == 2 and "0 to count - 1" in result.stderr
    result = batch(folder, sqlite_store, "--shard", "1/3")
    assert result.returncode == 1 and "needs --run-id" in result.stderr


def test_a_folder_without_predictions_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "iris"
    target.mkdir()
    (target / "model.yaml").write_text(
        "name: iris\nversion: '1'\nruntime: sklearn\nmodel: {uri: model.joblib}\n"
    )
    (target / "model.joblib").write_bytes(b"")
    result = subprocess.run(
        [MODELYARD, "batch", "run", str(target)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "declares no features and predictions" in result.stderr


def test_postgresql_store_keeps_one_row_per_entity_on_rerun(
    folder: Path, postgres: PostgresServer
) -> None:
    url = postgres.create_database("batch_rerun")
    ok(batch(folder, url, "--run-id", "again"))
    ok(batch(folder, url, "--run-id", "again", "--chunk-rows", "333"))
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            count, distinct = conn.execute(
                sa.text(f"SELECT COUNT(*), COUNT(DISTINCT {KEY}) FROM {table_name(MODEL, VERSION)}")
            ).one()
    finally:
        engine.dispose()
    assert count == distinct == USERS


pytestmark = pytest.mark.timeout(240)
