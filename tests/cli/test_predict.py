"""`modelyard predict` against a real server: V2 request files and rows (CSV, Parquet)
over REST (JSON and binary tensors) and gRPC, answers that are the model's own, and a
clear error for a bad file or an unknown model."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import joblib
import numpy as np
import pytest
import xgboost as xgb
from sklearn.datasets import load_breast_cancer, load_iris

from tests.support.server import MODELYARD, REPO, ServerProcess, copy_model, running

IRIS_ROWS = [0, 60, 120, 149]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("predict")
    for name in ("iris", "breast-cancer"):
        copy_model(name, root / "models")
    with running(ServerProcess(root / "models", root / "serve.log", ["--no-watch"])) as s:
        yield s


def predict(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MODELYARD, "predict", *args], capture_output=True, text=True, timeout=120
    )


def url(server: ServerProcess, grpc: bool) -> list[str]:
    return ["--url", server.grpc_url, "--grpc"] if grpc else ["--url", server.base]


@pytest.mark.parametrize("way", ["json", "binary", "grpc"])
def test_csv_rows_become_the_declared_input(
    way: str, server: ServerProcess, tmp_path: Path
) -> None:
    frame = load_iris(as_frame=True).data.iloc[IRIS_ROWS]
    data = tmp_path / "rows.csv"
    frame.to_csv(data, index=False)
    extra = ["--binary"] if way == "binary" else []
    done = predict("iris", "--data", str(data), *url(server, way == "grpc"), *extra, "--json")
    assert done.returncode == 0, done.stderr
    estimator = joblib.load(REPO / "model-settings/iris/model.joblib")
    expected = estimator.predict(frame.to_numpy()).tolist()
    assert np.ravel(json.loads(done.stdout)["predict"]).tolist() == expected


def test_parquet_rows_and_the_table(server: ServerProcess, tmp_path: Path) -> None:
    frame = load_breast_cancer(as_frame=True).data.iloc[:6].astype("float32")
    data = tmp_path / "rows.parquet"
    frame.to_parquet(data)
    done = predict("breast-cancer", "--data", str(data), "--url", server.base)
    assert done.returncode == 0, done.stderr
    booster = xgb.XGBClassifier()
    booster.load_model(REPO / "model-settings/breast-cancer/model.ubj")
    expected = booster.predict(frame.to_numpy())
    lines = [line for line in done.stdout.splitlines() if line.startswith("│")]
    assert len(lines) == len(frame)
    for i, line in enumerate(lines):
        cells = [c.strip() for c in line.strip("│").split("│")]
        assert cells == [str(i), str(expected[i])]
    assert "predict" in done.stdout


@pytest.mark.parametrize("grpc", [False, True])
def test_v2_request_file(grpc: bool, server: ServerProcess, tmp_path: Path) -> None:
    rows = load_iris().data[IRIS_ROWS]
    request = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": list(rows.shape),
                           "data": rows.ravel().tolist()}]}  # fmt: skip
    data = tmp_path / "request.json"
    data.write_text(json.dumps(request))
    done = predict("iris", "--data", str(data), *url(server, grpc), "--json")
    assert done.returncode == 0, done.stderr
    estimator = joblib.load(REPO / "model-settings/iris/model.joblib")
    assert np.ravel(json.loads(done.stdout)["predict"]).tolist() == estimator.predict(rows).tolist()


@pytest.mark.parametrize("grpc", [False, True])
def test_unknown_model_is_named(grpc: bool, server: ServerProcess, tmp_path: Path) -> None:
    data = tmp_path / "rows.csv"
    load_iris(as_frame=True).data.iloc[:2].to_csv(data, index=False)
    done = predict("nope", "--data", str(data), *url(server, grpc))
    assert done.returncode == 1
    assert "model 'nope' is not served at" in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("bad.json", '{"inputs": [', "is not valid JSON"),
        ("empty.json", '{"rows": []}', 'is not a V2 inference request: it needs an "inputs"'),
        ("short.json", '{"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 4],'
                       ' "data": [1.0]}]}', "input 'input-0': its data does not fit shape [1, 4]"),
        ("narrow.csv", "a,b\n1,2\n", "input 'input-0' takes 4 columns per row; the file has 2"),
        ("rows.txt", "1,2,3,4\n", "cannot tell what it holds from '.txt'"),
        ("broken.parquet", "not parquet", "cannot read"),
    ],
    ids=["invalid-json", "no-inputs", "short-data", "wrong-columns", "suffix", "bad-parquet"],
)  # fmt: skip
def test_bad_file_is_a_clear_error(
    name: str, content: str, fragment: str, server: ServerProcess, tmp_path: Path
) -> None:
    data = tmp_path / name
    data.write_text(content)
    done = predict("iris", "--data", str(data), "--url", server.base)
    assert done.returncode == 1
    assert fragment in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_missing_file_and_no_server(tmp_path: Path) -> None:
    done = predict("iris", "--data", str(tmp_path / "none.csv"))
    assert done.returncode == 1 and "none.csv: no such file" in done.stderr
    data = tmp_path / "rows.csv"
    data.write_text("a,b,c,d\n1,2,3,4\n")
    done = predict("iris", "--data", str(data), "--url", "http://127.0.0.1:9")
    assert done.returncode == 1
    assert "cannot reach http://127.0.0.1:9" in done.stderr, done.stderr
