"""The drift statistics equal scipy's and a textbook PSI on the same data; features are
found in logged V2 payloads by name (and name[i]); a batch sample is uniform; the
reference's mistakes are named."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest
import sqlalchemy as sa
from scipy import stats

from modelyard.errors import QualityError
from modelyard.quality import drift
from modelyard.quality.drift import BatchSample, Feature, Reference


def textbook_psi(expected: np.ndarray, actual: np.ndarray, buckets: int = 10) -> float:
    """PSI as it is usually written: decile buckets of the expected sample (the outer
    ones open), each empty bucket's share taken as 0.0001."""
    points = np.percentile(expected, np.arange(buckets + 1) / buckets * 100)
    points[0], points[-1] = -np.inf, np.inf
    e = np.histogram(expected, points)[0] / len(expected)
    a = np.histogram(actual, points)[0] / len(actual)
    e, a = np.where(e == 0, 0.0001, e), np.where(a == 0, 0.0001, a)
    return float(np.sum((a - e) * np.log(a / e)))


def textbook_category_psi(expected: list[str], actual: list[str]) -> float:
    categories = sorted(set(expected) | set(actual))
    e = np.array([expected.count(c) for c in categories]) / len(expected)
    a = np.array([actual.count(c) for c in categories]) / len(actual)
    e, a = np.where(e == 0, 0.0001, e), np.where(a == 0, 0.0001, a)
    return float(np.sum((a - e) * np.log(a / e)))


@pytest.mark.parametrize("shift", [0.0, 0.3, 3.0])
def test_numeric_statistics_equal_scipy_and_the_textbook_psi(shift: float) -> None:
    rng = np.random.default_rng(7)
    reference = rng.normal(10, 2, 5000)
    current = rng.normal(10 + shift * 2, 2, 800)
    with_missing = pd.Series([*current, None, np.nan, "not a number"], dtype=object)
    got = Feature.of("x", pd.Series(reference)).statistics(with_missing)
    ks = stats.ks_2samp(reference, current)
    assert got["ks"] == ks.statistic and got["ks_pvalue"] == ks.pvalue
    assert got["psi"] == pytest.approx(textbook_psi(reference, current), rel=1e-12)
    assert got["missing"] == 3 / 803 and got["samples"] == 800
    assert "chi2" not in got
    if shift == 0:
        assert got["psi"] < 0.05 and got["ks_pvalue"] > 0.01
    if shift == 3:
        assert got["psi"] > 2 and got["ks"] > 0.8


def test_categorical_statistics_equal_scipy_chisquare_and_the_textbook_psi() -> None:
    rng = np.random.default_rng(3)
    reference = list(rng.choice(["a", "b", "c"], 3000, p=[0.5, 0.3, 0.2]))
    current = list(rng.choice(["a", "b", "c", "d"], 500, p=[0.2, 0.3, 0.4, 0.1]))
    got = Feature.of("colour", pd.Series(reference)).statistics(pd.Series([*current, None]))
    counts = [current.count(c) for c in "abcd"]
    shares = np.maximum(np.array([reference.count(c) for c in "abcd"]) / 3000, 1e-4)
    expected = shares / shares.sum() * 500
    chi = stats.chisquare(counts, expected)
    assert got["chi2"] == pytest.approx(chi.statistic, rel=1e-12)
    assert got["chi2_pvalue"] == pytest.approx(chi.pvalue, rel=1e-9, abs=1e-300)
    assert got["psi"] == pytest.approx(textbook_category_psi(reference, current), rel=1e-12)
    assert got["missing"] == 1 / 501 and "ks" not in got
    # Booleans and integers in text are categories as the labels compare them.
    flags = Feature.of("flag", pd.Series([True, False] * 50))
    assert flags.kind == drift.CATEGORICAL
    assert flags.statistics(pd.Series(["true", "false"] * 50))["psi"] == 0


def test_features_are_found_in_logged_payloads_by_name() -> None:
    request = {
        "inputs": [
            {"name": "input-0", "shape": [2, 3], "datatype": "FP64", "data": [1, 2, 3, 4, 5, 6]},
            {"name": "city", "shape": [2], "datatype": "BYTES", "data": ["Oslo", "Rome"]},
        ]
    }
    response = {"outputs": [{"name": "predict", "shape": [2, 1], "data": [[0], [1]]}]}
    other = {"inputs": [{"name": "input-0", "shape": [1, 3], "data": {"root": [7, 8, 9]}}]}
    frame = drift.payload_frame(
        [
            (orjson.dumps(request).decode(), orjson.dumps(response).decode()),
            (orjson.dumps(other).decode(), "{}"),
            ('{"inputs": [{"name": "input-0", "shape": [5, 3], "data": [1]}]}', "{}"),
        ],
        ["input-0[0]", "input-0[2]", "city", "predict", "absent"],
    )
    assert frame["input-0[0]"].tolist() == [1, 4, 7]
    assert frame["input-0[2]"].tolist() == [3, 6, 9]
    assert frame["city"].tolist() == ["Oslo", "Rome", None]
    assert frame["predict"].tolist() == [0, 1, None]
    assert frame["absent"].isna().all()
    # A feature no payload carries is left out, not reported 100% missing.
    reference = {n: Feature.of(n, pd.Series([1.0, 2.0])) for n in ["input-0[0]", "absent"]}
    rows = drift.drift_rows(reference, frame, source="online", window="day", version="1")
    assert [r["feature"] for r in rows] == ["input-0[0]"]


def test_a_batch_sample_is_uniform_and_capped(tmp_path: Path) -> None:
    sample = BatchSample(["x", "p"], size=1000, seed=1)
    for start in range(0, 20000, 2500):
        ids = np.arange(start, start + 2500)
        inputs = pd.DataFrame({"id": ids, "x": ids.astype(float), "ignored": 0})
        sample.add_scored(inputs, pd.DataFrame({"id": ids, "p": ids % 2}), "id")
    rows = sample.rows
    assert len(rows) == 1000 and list(rows.columns) == ["x", "p", "__key"]
    assert (rows["p"] == rows["x"] % 2).all()  # inputs joined with their own outputs
    # Uniform over the 20,000 rows: each eighth holds about an eighth (125, sd 10.5).
    eighths = np.bincount((rows["x"] // 2500).astype(int), minlength=8)
    assert (abs(eighths - 125) < 55).all(), eighths
    engine = sa.create_engine(f"sqlite:///{tmp_path}/s.db")
    sample.write(engine, "m", "1", "night", 0)
    sample.write(engine, "m", "1", "night", 0)  # a shard run again replaces its sample
    with engine.connect() as conn:
        assert conn.execute(sa.text(f"SELECT count(*) FROM {drift.SAMPLES_TABLE}")).scalar() == 1000
    engine.dispose()


def test_the_reference_and_window_mistakes_are_named(tmp_path: Path) -> None:
    with pytest.raises(QualityError, match="does not exist"):
        Reference.load(tmp_path / "reference.parquet")
    with pytest.raises(QualityError, match=r"\.parquet or \.csv"):
        Reference.load(tmp_path / "reference.json")
    (tmp_path / "empty.csv").write_text("a,b\n")
    with pytest.raises(QualityError, match="no rows"):
        Reference.load(tmp_path / "empty.csv")
    (tmp_path / "ok.csv").write_text("a,b\n1.5,x\n2.5,y\n")
    reference = Reference.load(tmp_path / "ok.csv")
    assert {n: f.kind for n, f in reference.features.items()} == {
        "a": drift.NUMERIC, "b": drift.CATEGORICAL,
    }  # fmt: skip
    for bad in ("hour", "last:0", "last:x", "last"):
        with pytest.raises(QualityError, match="day, week or last:N"):
            drift.parse_window(bad)
    assert drift.parse_window("last:1000") == "last:1000"
    assert math.isnan(Feature.of("a", pd.Series([1.0])).statistics(pd.Series([], dtype=float))
                      ["missing"])  # fmt: skip


def test_the_exporter_sets_each_statistic_and_blanks_what_is_no_longer_computed(
    tmp_path: Path,
) -> None:
    from dataclasses import replace

    from prometheus_client import REGISTRY

    from modelyard.quality.exporter import export_drift
    from modelyard.quality.tables import QualityStore
    from modelyard.store.tables import now
    from tests.quality.conftest import classifier

    rng = np.random.default_rng(2)
    pd.DataFrame({"age": rng.normal(40, 10, 2000)}).to_csv(tmp_path / "ref.csv", index=False)
    config = replace(
        classifier(tmp_path, f"sqlite:///{tmp_path}/p.db"), model="drifty", reference="ref.csv"
    )
    store = QualityStore.open(config).ensure()
    ages = rng.normal(70, 10, 300)  # three standard deviations older

    def log(request_id: str, values: np.ndarray) -> None:
        request = {"inputs": [{"name": "age", "shape": [len(values)], "datatype": "FP64",
                               "data": values.tolist()}]}  # fmt: skip
        store.write_payloads([
            dict(model="drifty", request_id=request_id, version=config.version, logged_at=now(),
                 request=orjson.dumps(request).decode(), response="{}", truncated=False)
        ])  # fmt: skip

    log("r1", ages)
    cache = drift.PayloadCache()
    export_drift(config, store, cache)

    def value(statistic: str, window: str) -> float | None:
        return REGISTRY.get_sample_value(
            "modelyard_drift",
            dict(model="drifty", version=config.version, feature="age", statistic=statistic,
                 window=window),
        )  # fmt: skip

    expected = Feature.of("age", pd.read_csv(tmp_path / "ref.csv")["age"]).statistics(
        pd.Series(ages)
    )
    for window in ("day", "week", drift.last_window()):
        assert value("psi", window) == expected["psi"] > 2
        assert value("ks", window) == expected["ks"]
        assert value("samples", window) == 300
    # A request more: the cache parses it alone, and the numbers are those of both.
    more = rng.normal(40, 10, 100)
    log("r2", more)
    export_drift(config, store, cache)
    assert len(cache.parsed) == 2
    both = Feature.of("age", pd.read_csv(tmp_path / "ref.csv")["age"]).statistics(
        pd.Series(np.concatenate([more, ages]))
    )
    assert value("psi", "day") == pytest.approx(both["psi"], rel=1e-12)
    assert value("ks", "week") == both["ks"] and value("samples", "day") == 400
    # The requests leave the log (or the day turns): the numbers are blanked, not kept.
    with store.engine.begin() as conn:
        conn.execute(store.payloads.delete())
    export_drift(config, store, cache)
    assert not cache.parsed
    psi = value("psi", "day")
    assert psi is not None and math.isnan(psi)
    store.close()
