"""Predictions exported for analysis: `modelyard predictions export` to a local folder
and to S3 (a real moto server), and the declaration's export after each complete run;
the rows exported are the rows stored. Filters are parsed, never SQL."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
import yaml
from click.testing import CliRunner

from modelyard.batch.run import BatchJob, RunOptions
from modelyard.cli import main
from modelyard.store.export import ExportError, Filter
from modelyard.store.tables import table_name
from tests.batch.test_no_code import KEY, ROWS, fill_features, make_folder
from tests.support.s3 import S3Server

BUCKET = "warehouse"


@pytest.fixture
def scored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """A no-code sklearn model batch-scored from SQLite into a SQLite store."""
    source, store = f"sqlite:///{tmp_path}/features.db", f"sqlite:///{tmp_path}/store.db"
    fill_features(source)
    monkeypatch.setenv("FEATURES_DB_URL", source)
    monkeypatch.setenv("PREDICTIONS_DB_URL", store)
    folder, _ = make_folder(tmp_path, "sklearn")
    assert BatchJob(folder).run(RunOptions(run_id="night", bar=False)).error is None
    return folder, store


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    with S3Server() as server:
        server.client().create_bucket(Bucket=BUCKET)
        yield server


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The S3 server, with the variables s3fs reads pointing at it."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


def stored(store: str, *where: str) -> pd.DataFrame:
    engine = sa.create_engine(store)
    try:
        sql = f"SELECT * FROM {table_name('iris', '1')} WHERE run_id = 'night'"
        frame = pd.read_sql(" AND ".join([sql, *where]), engine)
    finally:
        engine.dispose()
    return frame.drop(columns=["predicted_at"]).sort_values(KEY).reset_index(drop=True)


def same(exported: pd.DataFrame, expected: pd.DataFrame) -> None:
    exported = exported.drop(columns=["predicted_at"]).sort_values(KEY).reset_index(drop=True)
    assert list(exported.columns) == list(expected.columns)
    pd.testing.assert_frame_equal(exported, expected, check_dtype=False)


def read_csv(source: object) -> pd.DataFrame:
    return pd.read_csv(source, dtype={c: str for c in ("model", "version", "run_id", KEY)})  # type: ignore[call-overload]


def export(*args: str) -> str:
    result = CliRunner().invoke(main, ["predictions", "export", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_export_to_a_local_folder_as_parquet_and_csv(
    scored: tuple[Path, str], tmp_path: Path
) -> None:
    folder, store = scored
    out = tmp_path / "exports"
    said = export(str(folder), "--run", "latest", "--format", "parquet", "--out", str(out))
    assert f"{ROWS:,} rows to {out}/iris-1-night.parquet" in said
    table = pq.read_table(out / "iris-1-night.parquet")
    assert table.num_rows == ROWS
    same(table.to_pandas(), stored(store))
    export("iris", "--store", store, "--run", "night", "--format", "csv",
           "--out", str(out / "night.csv"))  # fmt: skip
    same(read_csv(out / "night.csv"), stored(store))


def test_export_to_s3_with_a_filter(scored: tuple[Path, str], s3: S3Server) -> None:
    folder, store = scored
    export(str(folder), "--out", f"s3://{BUCKET}/iris/", "--where", "p_setosa > 0.5",
           "--where", "label = 0")  # fmt: skip
    body = s3.client().get_object(Bucket=BUCKET, Key="iris/iris-1-night.parquet")["Body"].read()
    exported = pq.read_table(io.BytesIO(body)).to_pandas()
    expected = stored(store, "p_setosa > 0.5", "label = 0")
    assert 0 < len(expected) < ROWS
    same(exported, expected)


def test_the_declaration_exports_each_complete_run(scored: tuple[Path, str], s3: S3Server) -> None:
    folder, store = scored
    decl = yaml.safe_load((folder / "model.yaml").read_text())
    decl["predictions"]["export"] = {"to": f"s3://{BUCKET}/nightly/", "format": "csv"}
    (folder / "model.yaml").write_text(yaml.safe_dump(decl))
    result = BatchJob(folder).run(RunOptions(run_id="night", bar=False))
    assert result.error is None, result.error
    assert f"exported to s3://{BUCKET}/nightly/iris-1-night.csv" in result.summary()
    body = s3.client().get_object(Bucket=BUCKET, Key="nightly/iris-1-night.csv")["Body"].read()
    same(read_csv(io.BytesIO(body)), stored(store))


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("p_setosa > 0.5; DROP TABLE x", "is not a number"),
        ("1 = 1", "write column operator value"),
        ("p_setosa ~ 3", "write column operator value"),
        ("nope > 1", "has no column 'nope'"),
    ],
)
def test_filters_are_parsed_never_sql(scored: tuple[Path, str], text: str, error: str) -> None:
    folder, store = scored
    result = CliRunner().invoke(
        main, ["predictions", "export", str(folder), "--out", os.devnull + ".d", "--where", text]
    )
    assert result.exit_code == 1 and error in result.output, result.output
    assert len(stored(store)) == ROWS  # nothing ran


def test_filter_values() -> None:
    assert Filter.parse("user_id = 'u1; DROP'") == Filter("user_id", "=", "u1; DROP")
    assert Filter.parse("x>=-1.5e3") == Filter("x", ">=", -1500.0)
    assert Filter.parse("ok != true") == Filter("ok", "!=", True)
    with pytest.raises(ExportError):
        Filter.parse("x > y")
