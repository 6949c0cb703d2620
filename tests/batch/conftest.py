"""A copy of the customer-profile example to batch-score, and ways to look at its store."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from modelyard_runtimes.predictor import PredictorPipeline

from modelyard.declarations.folders import load_model_folder
from modelyard.store.connection import PredictionStore
from modelyard.store.runs import RunInfo
from modelyard.store.tables import table_name
from tests.support.server import MODELYARD, REPO

EXAMPLE = REPO / "examples" / "customer-profile"
FILES = ("model.yaml", "features.sql", "features.db", "predictor.py", "model.joblib",
         "preprocess.pkl", "reference.parquet")  # fmt: skip
MODEL, VERSION, KEY = "gender", "0.1.0", "user_id"
VALUES = ["male_percentile", "female_percentile"]
USERS = 5000


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """The customer-profile model folder (5,000 users), copied: tests change it."""
    absent = [f for f in FILES if not (EXAMPLE / f).is_file()]
    assert not absent, f"{', '.join(absent)} not built in {EXAMPLE}: run `make models`"
    target = tmp_path / "customer-profile"
    target.mkdir()
    for name in FILES:
        shutil.copy2(EXAMPLE / name, target / name)
    return target


@pytest.fixture
def sqlite_store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/predictions.db"


def batch(
    folder: Path, store: str, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`modelyard batch run FOLDER ARGS` in a subprocess, its store at ``store``."""
    return subprocess.run(
        [MODELYARD, "batch", "run", str(folder), *args],
        env={**os.environ, "PREDICTIONS_DB_URL": store, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}:\n{result.stdout}{result.stderr}"
    return result.stdout


def direct_scores(folder: Path) -> pd.DataFrame:
    """What the predictor pipeline answers for every entity, in-process: the reference
    every stored row is checked against."""
    pipeline = PredictorPipeline.from_settings(load_model_folder(folder))
    pipeline.load()
    try:
        assert pipeline.features is not None
        scores = pd.concat([pipeline.score(c) for c in pipeline.features.iter_all(100_000)])
    finally:
        pipeline.close()
    return scores.set_index(KEY).sort_index()


def open_store(url: str) -> PredictionStore:
    return PredictionStore(sa.make_url(url), writer=False)


def stored(url: str, run_id: str, version: str = VERSION) -> pd.DataFrame:
    """The rows of one run, by entity, values as the model's FP32."""
    engine = sa.create_engine(url)
    try:
        table = sa.Table(table_name(MODEL, version), sa.MetaData(), autoload_with=engine)
        with engine.connect() as conn:
            rows = conn.execute(sa.select(table).where(table.c.run_id == run_id)).mappings().all()
    finally:
        engine.dispose()
    frame = pd.DataFrame([dict(r) for r in rows], columns=[c.name for c in table.columns])
    for name in VALUES:
        frame[name] = frame[name].astype("float32")
    return frame.set_index(KEY).sort_index()


def assert_matches(rows: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Row by row: the same entities, exactly the same values."""
    assert rows.index.is_unique
    assert list(rows.index) == list(expected.index)
    for name in VALUES:
        mismatched = rows.index[rows[name].to_numpy() != expected[name].to_numpy()]
        assert mismatched.empty, f"{name} differs for {list(mismatched[:5])}"


def latest(url: str) -> RunInfo | None:
    store = open_store(url)
    try:
        return store.ledger.latest_run(MODEL)
    finally:
        store.close()


def run_info(url: str, run_id: str) -> RunInfo | None:
    store = open_store(url)
    try:
        return store.ledger.run(MODEL, VERSION, run_id)
    finally:
        store.close()


def edit_declaration(folder: Path, edit: Callable[[str], str]) -> None:
    path = folder / "model.yaml"
    path.write_text(edit(path.read_text()))


def database_url(request: pytest.FixtureRequest, tmp_path: Path, kind: str, stem: str) -> str:
    """A fresh database for a test: a SQLite file, or one on the session's PostgreSQL."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/{stem}.db"
    server = request.getfixturevalue("postgres")
    return server.create_database(f"{stem}_{re.sub(r'[^a-z0-9]+', '_', tmp_path.name.lower())}")
