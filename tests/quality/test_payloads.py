"""The payload log called directly: the declared share of requests, ids that join with
labels, a size cap, and a full queue that drops and counts instead of waiting."""

from __future__ import annotations

import math
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import sqlalchemy as sa
from mlserver.model import MLModel
from mlserver.settings import ModelSettings
from mlserver.types import InferenceRequest, InferenceResponse
from prometheus_client import REGISTRY
from sklearn import metrics as sk

from modelyard.declarations.monitoring import QualityConfig
from modelyard.quality.evaluate import Evaluator
from modelyard.quality.payloads import PayloadLog
from modelyard.quality.tables import REQUEST, QualityStore
from tests.quality.conftest import CLASSES, Stores

MODEL = "scorer"


def model(folder: Path, rate: float) -> MLModel:
    """A model object as the server holds it, with a monitoring block in its settings."""
    settings = ModelSettings.model_validate(
        {
            "name": MODEL,
            "implementation": "mlserver.MLModel",
            "parameters": {
                "version": "3",
                "extra": {
                    "modelyard": {
                        "monitoring": {
                            "payload_sample_rate": rate,
                            "task": "classification",
                            "scores": CLASSES,
                        }
                    }
                },
            },
        }
    )
    settings._source = str(folder / "model-settings.json")
    return MLModel(settings)


def exchange(request_id: str, p_yes: list[float], values: int = 2) -> tuple[Any, Any]:
    rows = len(p_yes)
    request = InferenceRequest.model_validate(
        {"id": request_id, "inputs": [{"name": "x", "datatype": "FP64", "shape": [rows, values],
                                       "data": [0.5] * (rows * values)}]}
    )  # fmt: skip
    response = InferenceResponse.model_validate(
        {
            "model_name": MODEL,
            "model_version": "3",
            "id": request_id,
            "outputs": [
                {"name": "p_yes", "datatype": "FP64", "shape": [rows, 1], "data": p_yes},
                {"name": "p_no", "datatype": "FP64", "shape": [rows, 1],
                 "data": [1 - p for p in p_yes]},
            ],
        }
    )  # fmt: skip
    return request, response


def stored(folder: Path) -> list[sa.Row]:
    engine = sa.create_engine(f"sqlite:///{folder}/predictions.db")
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text("SELECT * FROM modelyard_payloads")).all())
    finally:
        engine.dispose()


def dropped(reason: str = "queue_full") -> float:
    value = REGISTRY.get_sample_value(
        "modelyard_payload_log_dropped_total", {"model": MODEL, "reason": reason}
    )
    return value or 0.0


def test_the_declared_share_is_logged_under_the_response_id(tmp_path: Path) -> None:
    log = PayloadLog()
    served = model(tmp_path, rate=0.25)
    n = 4000
    for i in range(n):
        log.record(served, *exchange(f"req-{i}", [0.5]))
    assert log.flush(timeout=60)
    rows = stored(tmp_path)
    # Binomial(4000, 0.25): 1000 expected, standard deviation 27.4; 5 of them either
    # side fails a correct sampler once in about two million runs.
    sigma = math.sqrt(n * 0.25 * 0.75)
    assert abs(len(rows) - n * 0.25) < 5 * sigma, len(rows)
    assert len({r.request_id for r in rows}) == len(rows)
    for row in rows[:20]:
        assert orjson.loads(row.response)["id"] == row.request_id
        assert orjson.loads(row.request)["inputs"][0]["shape"] == [1, 2]
        assert row.version == "3" and not row.truncated


def test_nothing_is_logged_at_rate_zero_or_without_monitoring(tmp_path: Path) -> None:
    log = PayloadLog()
    served = model(tmp_path, rate=0.0)
    for i in range(50):
        log.record(served, *exchange(f"r{i}", [0.5]))
    plain = MLModel(ModelSettings(name="plain", implementation="mlserver.MLModel"))
    log.record(plain, *exchange("p", [0.5]))
    assert log.flush(timeout=10)
    assert not (tmp_path / "predictions.db").exists()


def test_a_full_queue_drops_and_counts_instead_of_blocking(tmp_path: Path) -> None:
    served = model(tmp_path, rate=1.0)
    config = QualityConfig.from_settings(served.settings)
    assert config is not None
    QualityStore.open(config).ensure().close()
    log = PayloadLog(queue_size=2, flush_s=0.0)
    # Another writer holds the database: the log's writer will wait on it.
    blocker = sqlite3.connect(tmp_path / "predictions.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        log.record(served, *exchange("first", [0.5]))
        deadline = time.monotonic() + 10
        while log.queue.qsize() and time.monotonic() < deadline:  # the writer took it
            time.sleep(0.01)
        before = dropped()
        started = time.perf_counter()
        for i in range(10):
            log.record(served, *exchange(f"more-{i}", [0.5]))
        elapsed = time.perf_counter() - started
        assert log.queue.qsize() == 2
        assert dropped() - before == 8
        assert elapsed < 0.5, f"record() waited {elapsed:.3f}s with the writer blocked"
        assert stored(tmp_path) == []
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert log.flush(timeout=30)
    assert sorted(r.request_id for r in stored(tmp_path)) == ["first", "more-0", "more-1"]


def test_payloads_over_the_cap_are_cut_and_flagged(tmp_path: Path) -> None:
    log = PayloadLog(max_bytes=4096)
    served = model(tmp_path, rate=1.0)
    log.record(served, *exchange("big", [0.5], values=5000))
    log.record(served, *exchange("small", [0.5]))
    assert log.flush(timeout=10)
    rows = {r.request_id: r for r in stored(tmp_path)}
    assert rows["big"].truncated and len(rows["big"].request.encode()) <= 4096
    assert not rows["small"].truncated


def test_labels_by_request_id_judge_the_logged_responses(sqlite_stores: Stores) -> None:
    folder = sqlite_stores.folder
    log = PayloadLog()
    served = model(folder, rate=1.0)
    rng = np.random.default_rng(5)
    p_yes = rng.random((60, 2))  # 60 requests of 2 rows each
    for i in range(60):
        log.record(served, *exchange(f"q{i}", list(p_yes[i])))
    assert log.flush(timeout=10)
    config = QualityConfig.from_settings(served.settings)
    assert config is not None
    truth = np.where(rng.random((60, 2)) < p_yes, "yes", "no")
    ids = [f"q{i}" for i in range(60) for _ in range(2)]
    rows = [r for _ in range(60) for r in range(2)]
    observed = ["2025-03-04T10:00:00Z"] * 120
    sqlite_stores.labels(config, ids, list(truth.ravel()), observed, kind=REQUEST, rows=rows)
    # A label for a request that was never logged judges nothing.
    sqlite_stores.labels(config, ["unknown"], ["yes"], observed[:1], kind=REQUEST)

    evaluator = Evaluator(config, sqlite_stores.quality)
    evaluator.refresh()
    frame = evaluator.stored(kind="day")
    overall = frame[frame["class"] == ""].set_index("metric")["value"]
    y, score = truth.ravel(), p_yes.ravel()
    predicted = np.where(score >= 1 - score, "yes", "no")
    assert frame["window_samples"].iloc[0] == 120
    assert overall["accuracy"] == pytest.approx(sk.accuracy_score(y, predicted))
    assert overall["recall_macro"] == pytest.approx(sk.recall_score(y, predicted, average="macro"))
    assert frame[(frame["metric"] == "roc_auc") & (frame["class"] == "yes")]["value"].iloc[
        0
    ] == pytest.approx(sk.roc_auc_score(y == "yes", score))
