"""Drift end to end: a real `modelyard serve` of a model with a reference sample, its
payload log sampling REST and gRPC traffic; undrifted traffic stays below the PSI
threshold, traffic with one feature shifted by 3 standard deviations puts that feature
first and above it; a batch run of shifted data does the same; `modelyard drift` and
the Prometheus endpoint give the same numbers."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import yaml
from click.testing import CliRunner
from sklearn.datasets import load_iris

from modelyard.batch.run import BatchJob, RunOptions
from modelyard.cli import main
from tests.quality.served import poll, sample, scrape
from tests.support.clients import make_client
from tests.support.server import copy_model

THRESHOLD = 0.2  # the PSI the chart's alert fires over
SHIFTED = 1  # sepal width: 3 standard deviations move it far, and the predictions little
RATE = 0.5
ROWS_PER_REQUEST = 20
REQUESTS = 80
LAST = 20  # the rolling window: the last 20 logged requests (400 rows)
FEATURES = [f"input-0[{i}]" for i in range(4)]


def flowers(n: int, rng: np.random.Generator, shift: float = 0.0) -> np.ndarray:
    """Iris rows drawn with replacement and jittered (a tenth of each feature's standard
    deviation): the training distribution, or with feature SHIFTED moved by ``shift``
    standard deviations."""
    x, _ = load_iris(return_X_y=True)
    rows = x[rng.integers(0, len(x), n)] + rng.normal(0, 0.1, (n, 4)) * x.std(axis=0)
    rows[:, SHIFTED] += shift * x[:, SHIFTED].std()
    return rows


def cli_drift(*args: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(main, ["drift", *args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def exported(samples: dict, model: str, window: str) -> dict[tuple[str, str], float]:
    """(feature, statistic) -> value of modelyard_drift for ``window``."""
    found = {}
    for (name, labels), value in samples.items():
        labels = dict(labels)
        if name == "modelyard_drift" and labels["model"] == model and labels["window"] == window:
            found[(labels["feature"], labels["statistic"])] = value
    return found


def agree(rows: list[dict[str, Any]], gauges: dict[tuple[str, str], float]) -> None:
    """Every number of the command's table is the endpoint's."""
    assert rows
    for row in rows:
        for statistic in ("psi", "ks", "ks_pvalue", "chi2", "chi2_pvalue", "missing", "samples"):
            if row[statistic] is None:
                assert (row["feature"], statistic) not in gauges
            else:
                assert (row["feature"], statistic) in gauges, (row["feature"], statistic)
                assert gauges[(row["feature"], statistic)] == pytest.approx(
                    row[statistic], rel=1e-12, abs=1e-300
                ), (row["feature"], statistic)


def logged_ids(folder: Path) -> list[str]:
    engine = sa.create_engine(f"sqlite:///{folder}/predictions.db")
    try:
        with engine.connect() as conn:
            return list(
                conn.execute(sa.text("SELECT request_id FROM modelyard_payloads")).scalars()
            )
    finally:
        engine.dispose()


def psi(rows: list[dict[str, Any]]) -> dict[str, float]:
    return {row["feature"]: row["psi"] for row in rows}


@pytest.mark.timeout(300)
def test_served_traffic_drifts_on_the_shifted_feature_over_rest_and_grpc(
    tmp_path: Path, serve_dir
) -> None:  # type: ignore[no-untyped-def]
    folder = copy_model("iris", tmp_path / "models")
    rng = np.random.default_rng(11)
    reference = flowers(5000, rng)
    model = joblib.load(folder / "model.joblib")
    frame = pd.DataFrame(reference, columns=FEATURES)
    frame["predict"] = model.predict(reference)
    frame.to_parquet(folder / "reference.parquet")
    with (folder / "model.yaml").open("a") as f:
        f.write(f"monitoring:\n  payload_sample_rate: {RATE}\n  reference: reference.parquet\n")
    server = serve_dir(
        tmp_path / "models", MODELYARD_QUALITY_REFRESH_S="0.5", MODELYARD_DRIFT_LAST=str(LAST)
    )
    rest, grpc = make_client("http", server), make_client("grpc", server)
    window = f"last:{LAST}"

    def send(shift: float) -> list[dict[str, Any]]:
        for i in range(REQUESTS):
            rows = flowers(ROWS_PER_REQUEST, rng, shift)
            client = rest if i % 2 else grpc
            mod = httpclient if client is rest else grpcclient
            request = mod.InferInput("input-0", list(rows.shape), "FP64")
            request.set_data_from_numpy(rows, **({"binary_data": False} if client is rest else {}))
            protocol = "rest" if client is rest else "grpc"
            client.infer("iris", [request], request_id=f"{protocol}-{shift}-{i}")

        def written(samples: dict) -> bool:
            sampled = sample(samples, "modelyard_payload_log_sampled_total", model="iris")
            return sampled == sample(samples, "modelyard_payload_log_written_total", model="iris")

        poll(server, written)
        # Both protocols are in the log: Binomial(40, 0.5) requests each.
        ids = logged_ids(folder)
        for protocol in ("rest", "grpc"):
            assert sum(i.startswith(f"{protocol}-{shift}-") for i in ids) >= 8, ids
        table = cli_drift(str(folder), "--window", window)
        assert {r["source"] for r in table} == {"online"}
        # The server's next refresh computes the same numbers from the same rows.
        poll(server, lambda s: agree(table, exported(s, "iris", window)) or True)
        return table

    steady = send(0.0)
    assert set(psi(steady)) == {*FEATURES, "predict"}
    # Binomial(80, 0.5) requests logged: at least 20 but for a chance under 1e-5.
    assert all(r["samples"] == LAST * ROWS_PER_REQUEST for r in steady)
    assert max(psi(steady).values()) < THRESHOLD, steady
    assert all(r["missing"] == 0 for r in steady)

    shifted = send(3.0)
    ranked = [r["feature"] for r in shifted]
    assert ranked[0] == FEATURES[SHIFTED], shifted
    assert shifted[0]["psi"] > THRESHOLD and shifted[0]["ks"] > 0.8
    assert shifted[0]["ks_pvalue"] < 1e-6
    others = {f: v for f, v in psi(shifted).items() if f != FEATURES[SHIFTED]}
    assert max(others.values()) < THRESHOLD, shifted
    # The day window holds both: drifted, less than the last 20 requests alone.
    day = cli_drift(str(folder), "--window", "day")
    assert psi(day)[FEATURES[SHIFTED]] < shifted[0]["psi"]
    assert day[0]["samples"] > LAST * ROWS_PER_REQUEST

    # A picture and a report a person can open.
    out = tmp_path / "drift.png"
    result = CliRunner().invoke(
        main,
        ["drift", str(folder), "--window", window, "--plot", str(out), "--html",
         str(tmp_path / "drift.html")],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert FEATURES[SHIFTED] in result.output and "*" in result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "data:image/png;base64," in (tmp_path / "drift.html").read_text()


BATCH_FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def batch_folder(tmp_path: Path, source: str, store: str) -> Path:
    folder = tmp_path / "models" / "flowers"
    folder.mkdir(parents=True)
    x, y = load_iris(return_X_y=True)
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=1000, random_state=0).fit(x, y)
    joblib.dump(model, folder / "model.joblib")
    reference = pd.DataFrame(flowers(5000, np.random.default_rng(5)), columns=BATCH_FEATURES)
    reference["label"] = model.predict(reference.to_numpy())
    reference.to_csv(folder / "reference.csv", index=False)
    (folder / "features.sql").write_text(
        f"SELECT flower_id, {', '.join(BATCH_FEATURES)} FROM flowers\n"
    )
    declaration = {
        "name": "flowers",
        "version": "1",
        "runtime": "sklearn",
        "model": {"uri": "model.joblib"},
        "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}],
        "outputs": [{"name": "predict", "datatype": "INT64", "shape": [-1, 1]}],
        "features": {"sql": "features.sql", "source": source, "key": "flower_id"},
        "predictions": {
            "columns": {"flower_id": "BYTES", "label": "INT64"},
            "outputs": {"predict": "label"},
            "store": store,
        },
        "monitoring": {"reference": "reference.csv"},
    }
    (folder / "model.yaml").write_text(yaml.safe_dump(declaration, sort_keys=False))
    return folder


def fill(source: str, rows: np.ndarray) -> None:
    frame = pd.DataFrame(rows, columns=BATCH_FEATURES)
    frame.insert(0, "flower_id", [f"f{i:05d}" for i in range(len(frame))])
    engine = sa.create_engine(source)
    try:
        frame.to_sql("flowers", engine, index=False, if_exists="replace")
    finally:
        engine.dispose()


@pytest.mark.timeout(300)
def test_a_batch_run_of_shifted_data_drifts_against_the_reference_and_the_run_before(
    tmp_path: Path, serve_dir, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    source = f"sqlite:///{tmp_path}/features.db"
    store = f"sqlite:///{tmp_path}/predictions.db"
    folder = batch_folder(tmp_path, source, store)
    rng = np.random.default_rng(9)
    rows = 6000  # under a shard's sample cap (10,000): every row is in the sample
    fill(source, flowers(rows, rng))
    result = BatchJob(folder).run(RunOptions(run_id="monday", chunk_rows=1000, bar=False))
    assert result.error is None, result.error
    monday = cli_drift(str(folder))
    assert {(r["source"], r["window"]) for r in monday} == {("batch", "run")}
    assert set(psi(monday)) == {*BATCH_FEATURES, "label"}
    assert all(r["samples"] == rows for r in monday)
    assert max(psi(monday).values()) < THRESHOLD, monday

    fill(source, flowers(rows, rng, shift=3.0))
    result = BatchJob(folder).run(RunOptions(run_id="tuesday", chunk_rows=1000, bar=False))
    assert result.error is None, result.error
    tuesday = cli_drift(str(folder))
    for window in ("run", "run:previous"):
        part = [r for r in tuesday if r["window"] == window]
        assert part[0]["feature"] == "sepal_width" and part[0]["psi"] > THRESHOLD, part
        assert max(r["psi"] for r in part[1:]) < THRESHOLD, part
        assert part[0]["ks"] > 0.8 and not math.isnan(part[0]["ks_pvalue"])

    # The server serving the model exports the same numbers.
    monkeypatch.delenv("PREDICTIONS_DB_URL", raising=False)
    shutil.rmtree(tmp_path / "models" / "flowers" / "__pycache__", ignore_errors=True)
    server = serve_dir(tmp_path / "models", MODELYARD_QUALITY_REFRESH_S="0.5")
    for window in ("run", "run:previous"):
        part = [r for r in tuesday if r["window"] == window]
        poll(server, lambda s, w=window, p=part: agree(p, exported(s, "flowers", w)) or True)
    assert scrape(server)
