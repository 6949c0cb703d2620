"""The companions of a no-code LightGBM, CatBoost, ONNX and MLflow model on a real
server: a folder with features and predictions is batch scored by its own runtime, its
``<name>-lookup`` answers what the run stored by entity id, and labels sent to
``<name>-feedback`` give the quality metrics of those predictions."""

from __future__ import annotations

import sqlite3
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import catboost
import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import yaml
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from modelyard.batch.run import BatchJob, RunOptions
from modelyard.quality.config import config_for
from modelyard.quality.evaluate import Evaluator
from modelyard.quality.tables import QualityStore
from tests.support.clients import ids, infer, make_client
from tests.support.server import ServerProcess, running

KEY = "flower_id"
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
X, Y = load_iris(return_X_y=True)
ENTITIES = [f"f{i:03d}" for i in range(len(X))]
PROBA = ["p0", "p1", "p2"]
RUNTIMES = ["lightgbm", "catboost", "onnx", "mlflow"]


def tensor(name: str, datatype: str, shape: list[int]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape}


def lightgbm_model(folder: Path) -> tuple[dict[str, Any], np.ndarray]:
    params = {"objective": "multiclass", "num_class": 3, "num_leaves": 4, "verbose": -1,
              "num_threads": 1}  # fmt: skip
    booster = lgb.train(params, lgb.Dataset(X, Y), num_boost_round=5)
    booster.save_model(str(folder / "model.txt"))
    keys = {
        "model": {"uri": "model.txt"},
        "inputs": [tensor("input-0", "FP64", [-1, 4])],
        "outputs": [tensor("predict", "FP64", [-1, 3])],
        "predictions": {"columns": dict.fromkeys(PROBA, "FP64"), "outputs": {"predict": PROBA}},
        # The class scored highest is the prediction.
        "monitoring": {
            "task": "classification",
            "scores": {str(c): p for c, p in enumerate(PROBA)},
        },
    }
    return keys, booster.predict(X)


def catboost_model(folder: Path) -> tuple[dict[str, Any], np.ndarray]:
    model = catboost.CatBoostClassifier(
        iterations=10, depth=2, verbose=False, thread_count=1, allow_writing_files=False
    ).fit(X, Y)
    model.save_model(str(folder / "model.cbm"))
    keys = {
        "model": {"uri": "model.cbm"},
        "inputs": [tensor("input-0", "FP64", [-1, 4])],
        "outputs": [tensor("predict", "INT64", [-1, 1])],
        "predictions": {"columns": {"label": "INT64"}, "outputs": {"predict": "label"}},
        "monitoring": {"task": "classification", "prediction": "label"},
    }
    return keys, model.predict(X).ravel()


def onnx_model(folder: Path) -> tuple[dict[str, Any], np.ndarray]:
    logistic = LogisticRegression(max_iter=1000).fit(X, Y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = convert_sklearn(
            logistic, initial_types=[("float_input", FloatTensorType([None, 4]))],
            options={id(logistic): {"zipmap": False}}, target_opset=17,
        )  # fmt: skip
    (folder / "model.onnx").write_bytes(graph.SerializeToString())
    import onnxruntime as ort

    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    keys = {
        "model": {"uri": "model.onnx"},
        "inputs": [tensor("float_input", "FP32", [-1, 4])],
        "outputs": [tensor("label", "INT64", [-1]), tensor("probabilities", "FP32", [-1, 3])],
        "predictions": {"columns": {"label": "INT64"}, "outputs": {"label": "label"}},
        "monitoring": {"task": "classification", "prediction": "label"},
    }
    return keys, session.run(["label"], {"float_input": X.astype(np.float32)})[0]


def mlflow_model(folder: Path) -> tuple[dict[str, Any], np.ndarray]:
    import mlflow.sklearn
    from mlflow.models import infer_signature

    logistic = LogisticRegression(max_iter=1000).fit(X, Y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow.sklearn.save_model(logistic, folder / "model", signature=infer_signature(X, Y))
    keys = {
        "model": {"uri": "model"},
        "predictions": {"columns": {"label": "INT64"}, "outputs": {"output-0": "label"}},
        "monitoring": {"task": "classification", "prediction": "label"},
    }
    return keys, logistic.predict(X)


BUILDERS: dict[str, Callable[[Path], tuple[dict[str, Any], np.ndarray]]] = {
    "lightgbm": lightgbm_model,
    "catboost": catboost_model,
    "onnx": onnx_model,
    "mlflow": mlflow_model,
}


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A folder per runtime, batch scored from one features database; what each stored."""
    base = tmp_path_factory.mktemp("companions")
    features = base / "features.db"
    frame = pd.DataFrame(X, columns=FEATURES)
    frame.insert(0, KEY, ENTITIES)
    with sqlite3.connect(features) as conn:
        frame.to_sql("flowers", conn, index=False)
    root = base / "models"
    expected: dict[str, np.ndarray] = {}
    for runtime in RUNTIMES:
        folder = root / f"iris-{runtime}"
        folder.mkdir(parents=True)
        (folder / "features.sql").write_text(f"SELECT {KEY}, {', '.join(FEATURES)} FROM flowers\n")
        keys, expected[runtime] = BUILDERS[runtime](folder)
        keys["predictions"]["columns"] = {KEY: "BYTES", **keys["predictions"]["columns"]}
        keys["predictions"]["store"] = "sqlite:///predictions.db"  # in the model folder
        declaration = {
            "name": folder.name, "version": "1", "runtime": runtime, **keys,
            "features": {"sql": "features.sql", "source": f"sqlite:///{features}", "key": KEY},
        }  # fmt: skip
        (folder / "model.yaml").write_text(yaml.safe_dump(declaration, sort_keys=False))
        result = BatchJob(folder).run(RunOptions(run_id="night", bar=False))
        assert result.error is None, f"{runtime}: {result.error}"
        assert result.rows == len(X)
    return {"root": root, "expected": expected}


@pytest.fixture(scope="module")
def server(
    scored: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("companions-server") / "serve.log"
    with running(ServerProcess(scored["root"], log, extra_args=["--no-watch"])) as server:
        yield server


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_lookup_answers_the_batch_run_and_labels_give_its_quality(
    runtime: str, scored: dict[str, Any], server: ServerProcess
) -> None:
    name = f"iris-{runtime}"
    status = {s["name"]: s for s in server.status()["models"]}[name]
    assert status["state"] == "ready", status
    assert sorted(status["companions"]) == [f"{name}-feedback", f"{name}-lookup"]
    expected = scored["expected"][runtime]
    labels = expected.argmax(axis=1) if expected.ndim == 2 else expected

    # The lookup answers what the batch run stored, which is the library's own answer.
    asked = [*ENTITIES[::7], "nobody"]
    for protocol in ("http", "grpc"):
        result = infer(make_client(protocol, server), f"{name}-lookup", {KEY: ids(*asked)})
        assert result.as_numpy("missing").tolist() == [False] * (len(asked) - 1) + [True]
        rows = np.arange(len(X))[::7]
        if expected.ndim == 2:
            got = np.stack([result.as_numpy(p)[:-1] for p in PROBA], axis=1)
            np.testing.assert_allclose(got, expected[rows], rtol=1e-12)
        else:
            assert result.as_numpy("label")[:-1].tolist() == labels[rows].tolist()

    # The truth for every flower, sent by entity id; its quality is the library's.
    truth = Y.copy()
    truth[::10] = (truth[::10] + 1) % 3  # some wrong, so accuracy is not trivially 1
    client = make_client("grpc", server)
    answer = infer(client, f"{name}-feedback", {KEY: ids(*ENTITIES), "label": (truth, "INT64")})
    assert answer.as_numpy("received").tolist() == [len(X)]
    folder = scored["root"] / name
    config = config_for(str(folder), scored["root"], None)
    quality = QualityStore.open(config)
    try:
        evaluator = Evaluator(config, quality)
        evaluator.refresh()
        metrics = evaluator.stored(kind="week")
    finally:
        quality.close()
    overall = metrics[metrics["class"].fillna("") == ""].set_index("metric")
    assert overall.loc["accuracy", "samples"] == len(X), metrics
    assert overall.loc["accuracy", "value"] == pytest.approx(float(np.mean(labels == truth)))
