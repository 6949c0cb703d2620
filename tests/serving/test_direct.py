"""Models answered directly: MLServer's XGBoost and scikit-learn runtimes, loaded as the
registry loads them, must give exactly the answers of the libraries' own ``predict``
for every kind of model they serve, and the libraries' errors for what they reject."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from mlserver.errors import InferenceError
from mlserver.model import MLModel
from mlserver.settings import ModelParameters, ModelSettings
from mlserver.types import InferenceRequest, RequestInput, RequestOutput
from mlserver_sklearn import SKLearnModel
from mlserver_xgboost import XGBoostModel
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.linear_model import (
    LinearRegression,
    LogisticRegression,
    Ridge,
    RidgeClassifier,
    SGDClassifier,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from modelyard.serving.direct import DIRECT_ENV, predict_directly

BREAST = load_breast_cancer(return_X_y=True)
IRIS = load_iris(return_X_y=True)
DIABETES = load_diabetes(return_X_y=True)


def early_stopped() -> tuple[xgb.XGBClassifier, np.ndarray]:
    x, y = BREAST
    model = xgb.XGBClassifier(n_estimators=200, learning_rate=0.5, early_stopping_rounds=2)
    model.fit(x[::2], y[::2], eval_set=[(x[1::2], y[1::2])], verbose=False)
    # The wrapper predicts with the trees up to the best iteration only: so must we.
    assert model.best_iteration + 1 < model.get_booster().num_boosted_rounds()
    return model, x


MODELS = {
    "binary": lambda: (xgb.XGBClassifier(n_estimators=20).fit(*BREAST), BREAST[0]),
    "multiclass": lambda: (xgb.XGBClassifier(n_estimators=20).fit(*IRIS), IRIS[0]),
    "softmax": lambda: (
        xgb.XGBClassifier(n_estimators=20, objective="multi:softmax").fit(*IRIS),
        IRIS[0],
    ),
    "regressor": lambda: (xgb.XGBRegressor(n_estimators=20).fit(*DIABETES), DIABETES[0]),
    "early-stopped": early_stopped,
}


async def loaded(estimator: xgb.XGBModel, tmp_path: Path) -> XGBoostModel:
    """The estimator saved and loaded by MLServer's XGBoost runtime."""
    uri = tmp_path / "model.ubj"
    estimator.save_model(uri)
    settings = ModelSettings(
        name="m", implementation=XGBoostModel, parameters=ModelParameters(uri=str(uri))
    )
    model = XGBoostModel(settings)
    assert await model.load()
    return model


def request(x: np.ndarray, *outputs: str) -> InferenceRequest:
    return InferenceRequest(
        inputs=[
            RequestInput(
                name="x", datatype="FP32", shape=list(x.shape), data=x.astype(np.float32).ravel()
            )
        ],
        outputs=[RequestOutput(name=o) for o in outputs],
    )


def assert_library_answers(estimator: Any, x: np.ndarray, *methods: str) -> None:
    """The direct methods answer, as the library would, every row, one row, a Fortran-
    ordered slice and the rows in the other float width."""
    cls = type(estimator)
    assert estimator.predict.__func__ is not cls.predict  # the direct one answers
    other = np.float64 if x.dtype == np.float32 else np.float32
    for rows in (x, x[:1], x[17:18], np.asfortranarray(x[:9]), x[:5].astype(other)):
        for method in methods:
            ours = getattr(estimator, method)(rows)
            theirs = getattr(cls, method)(estimator, rows)
            assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
            np.testing.assert_array_equal(ours, theirs)


async def assert_served_as_library(model: MLModel, x: np.ndarray, *methods: str) -> None:
    """Given the direct methods, the model answers as its library, called directly and
    through its runtime, as requests reach it."""
    assert predict_directly(model)
    estimator = model._model
    assert_library_answers(estimator, x, *methods)
    datatype = "FP32" if x.dtype == np.float32 else "FP64"
    payload = RequestInput(name="x", datatype=datatype, shape=list(x.shape), data=x.ravel())
    (out,) = (await model.predict(InferenceRequest(inputs=[payload]))).outputs
    served = [v.decode() if isinstance(v, bytes) else v for v in np.ravel(out.data.root)]
    assert served == np.ravel(type(estimator).predict(estimator, x)).tolist()


@pytest.mark.parametrize("kind", MODELS)
async def test_direct_answers_are_the_wrappers(kind: str, tmp_path: Path) -> None:
    trained, x = MODELS[kind]()
    # multi:softmax's probabilities come from the wrapper, through the same method.
    methods = ("predict",) if kind == "regressor" else ("predict", "predict_proba")
    await assert_served_as_library(await loaded(trained, tmp_path), x.astype(np.float32), *methods)


async def test_threads_predicting_at_once_get_their_own_answers(tmp_path: Path) -> None:
    # Each thread wraps its input in a matrix of its own: none sees another's rows.
    trained, x = MODELS["multiclass"]()
    model = await loaded(trained, tmp_path)
    assert predict_directly(model)
    estimator = model._model
    x = x.astype(np.float32)
    batches = [x[i : i + 1 + i % 7] for i in range(0, len(x) - 8)] * 20
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(estimator.predict_proba, batches))
    for rows, ours in zip(batches, answers, strict=True):
        np.testing.assert_array_equal(ours, type(estimator).predict_proba(estimator, rows))


async def test_the_runtime_checks_still_see_the_estimator(tmp_path: Path) -> None:
    model = await loaded(MODELS["regressor"]()[0], tmp_path)
    assert predict_directly(model)
    x = DIABETES[0][:2]
    with pytest.raises(InferenceError, match="XGBRegressor models do not support"):
        await model.predict(request(x, "predict_proba"))


async def test_calls_it_does_not_cover_go_to_the_wrapper(tmp_path: Path) -> None:
    trained, x = MODELS["binary"]()
    model = await loaded(trained, tmp_path)
    assert predict_directly(model)
    estimator = model._model
    frame = pd.DataFrame(x[:5].astype(np.float32))
    np.testing.assert_array_equal(estimator.predict(frame), trained.predict(frame))
    margins = estimator.predict(x[:5].astype(np.float32), output_margin=True)
    np.testing.assert_allclose(margins, trained.predict(x[:5], output_margin=True), rtol=1e-6)


async def test_models_it_does_not_know_keep_their_own_predict(tmp_path: Path) -> None:
    linear = await loaded(
        xgb.XGBClassifier(booster="gblinear", n_estimators=5).fit(*BREAST), tmp_path
    )
    assert not predict_directly(linear)
    assert "predict" not in vars(linear._model)


def _names(y: np.ndarray) -> np.ndarray:
    return np.array(["setosa", "versicolor", "virginica"])[y]


LINEAR = {
    "logistic-multiclass": lambda: (LogisticRegression(max_iter=500).fit(*IRIS), IRIS[0]),
    "logistic-binary": lambda: (LogisticRegression(max_iter=5000).fit(*BREAST), BREAST[0]),
    "logistic-named-classes": lambda: (
        LogisticRegression(max_iter=500).fit(IRIS[0], _names(IRIS[1])),
        IRIS[0],
    ),
    "sgd-classifier": lambda: (SGDClassifier(random_state=0).fit(*BREAST), BREAST[0]),
    "linear-svc": lambda: (LinearSVC(max_iter=5000).fit(*IRIS), IRIS[0]),
    "linear-regression": lambda: (LinearRegression().fit(*DIABETES), DIABETES[0]),
    "ridge-two-targets": lambda: (
        Ridge().fit(DIABETES[0], np.c_[DIABETES[1], -DIABETES[1]]),
        DIABETES[0],
    ),
}


async def sklearn_loaded(estimator: object, tmp_path: Path) -> SKLearnModel:
    """The estimator saved and loaded by MLServer's scikit-learn runtime."""
    joblib.dump(estimator, tmp_path / "model.joblib")
    settings = ModelSettings(
        name="s",
        implementation=SKLearnModel,
        parameters=ModelParameters(uri=str(tmp_path / "model.joblib")),
    )
    model = SKLearnModel(settings)
    assert await model.load()
    return model


@pytest.mark.parametrize("kind", LINEAR)
async def test_linear_answers_are_scikit_learns(kind: str, tmp_path: Path) -> None:
    trained, x = LINEAR[kind]()
    await assert_served_as_library(await sklearn_loaded(trained, tmp_path), x, "predict")


async def test_what_scikit_learn_rejects_it_still_rejects(tmp_path: Path) -> None:
    model = await sklearn_loaded(LINEAR["logistic-multiclass"]()[0], tmp_path)
    assert predict_directly(model)
    estimator = model._model
    row = IRIS[0][:1].copy()
    with pytest.raises(ValueError, match="features, but LogisticRegression is expecting 4"):
        estimator.predict(row[:, :3])
    for bad in (np.nan, np.inf):
        row[0, 1] = bad
        with pytest.raises(ValueError, match="Input X contains"):
            estimator.predict(row)
    with pytest.raises(ValueError, match="0 sample"):
        estimator.predict(row[:0])
    # Integers and lists are scikit-learn's to convert.
    np.testing.assert_array_equal(estimator.predict([[5, 3, 1, 0]]), [0])
    np.testing.assert_array_equal(estimator.predict(IRIS[0][:3].astype(np.int64)), [0, 0, 0])


async def test_scikit_learn_models_it_does_not_know_keep_their_own_predict(
    tmp_path: Path,
) -> None:
    x, y = IRIS
    frame = pd.DataFrame(x, columns=["a", "b", "c", "d"])
    for estimator in (
        LogisticRegression(max_iter=500).fit(frame, y),  # checks the names it is given
        make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y),
        RidgeClassifier().fit(x, y),  # a predict of its own
        LogisticRegression(max_iter=500).fit(x, y).sparsify(),  # a sparse product
        xgb.XGBClassifier(n_estimators=5).fit(x, y),  # through scikit-learn's runtime
    ):
        model = await sklearn_loaded(estimator, tmp_path)
        assert not predict_directly(model)
        assert "predict" not in vars(model._model)


async def test_switched_off_every_model_keeps_its_library(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DIRECT_ENV, "off")
    for model in (
        await sklearn_loaded(LINEAR["logistic-multiclass"]()[0], tmp_path),
        await loaded(MODELS["binary"]()[0], tmp_path),
    ):
        assert not predict_directly(model)
        assert "predict" not in vars(model._model)
