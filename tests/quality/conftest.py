"""Stores with batch runs and labels, made through the store's own API, in SQLite or a
real PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modelyard.declarations.monitoring import QualityConfig
from modelyard.quality.labels import label_frame
from modelyard.quality.tables import ENTITY, QualityStore
from modelyard.store.connection import PredictionStore
from modelyard.store.runs import RunInfo
from modelyard.store.tables import PredictionsSpec, now
from tests.support.postgres import PostgresServer

MODEL, VERSION, KEY = "churn", "1.0", "user_id"
CLASSES = {"yes": "p_yes", "no": "p_no"}
COLUMNS = {KEY: "BYTES", "p_yes": "FP64", "p_no": "FP64"}


def classifier(folder: Path, store: str, **changes: object) -> QualityConfig:
    config = QualityConfig(
        model=MODEL, version=VERSION, folder=folder, store=store, key=KEY,
        task="classification", scores=dict(CLASSES),
    )  # fmt: skip
    return QualityConfig(**{**config.__dict__, **changes})  # type: ignore[arg-type]


@dataclass
class Stores:
    """A store's URL, its quality tables, and a way to record batch runs in it."""

    url: str
    folder: Path

    def __post_init__(self) -> None:
        self.predictions = PredictionStore.open(self.url, self.folder)
        self.quality = QualityStore(self.predictions)

    def run(
        self, run_id: str, frame: pd.DataFrame, version: str = VERSION, columns: dict | None = None
    ) -> RunInfo:
        """A complete batch run of ``frame`` (user_id and the score columns)."""
        spec = PredictionsSpec.of(MODEL, version, KEY, columns or COLUMNS)
        table = self.predictions.tables.ensure(spec)
        self.predictions.ledger.start_shard(spec, run_id, 0, 1)
        self.predictions.predictions.write(table, spec, run_id, frame, now())
        return self.predictions.ledger.finish_shard(spec, run_id, 0, len(frame), 0)

    def labels(
        self,
        config: QualityConfig,
        keys: Sequence[str],
        labels: Sequence[object],
        observed: Sequence[datetime | str],
        kind: str = ENTITY,
        rows: Sequence[int] | None = None,
    ) -> int:
        frame = label_frame(config, kind, list(keys), list(labels), list(observed), rows)
        return self.quality.write_labels(config.model, frame).changed

    def close(self) -> None:
        self.predictions.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stores]:
    """The same store API over a SQLite file and a real PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/predictions.db"
    else:
        postgres: PostgresServer = request.getfixturevalue("postgres")
        name = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:50]
        url = postgres.create_database(name)
    stores = Stores(url, tmp_path)
    try:
        yield stores
    finally:
        stores.close()


@pytest.fixture
def sqlite_stores(tmp_path: Path) -> Iterator[Stores]:
    stores = Stores(f"sqlite:///{tmp_path}/predictions.db", tmp_path)
    try:
        yield stores
    finally:
        stores.close()


def scores_frame(ids: Sequence[str], p_yes: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({KEY: list(ids), "p_yes": p_yes, "p_no": 1.0 - p_yes})
