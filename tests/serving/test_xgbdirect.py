"""XGBoost models answered through the booster directly: MLServer's XGBoost runtime,
loaded as the registry loads it, must give exactly the answers of XGBoost's own
scikit-learn wrapper for every kind of model it serves."""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from mlserver.errors import InferenceError
from mlserver.settings import ModelParameters, ModelSettings
from mlserver.types import InferenceRequest, RequestInput, RequestOutput
from mlserver_sklearn import SKLearnModel
from mlserver_xgboost import XGBoostModel
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.linear_model import LogisticRegression

from modelyard.xgbdirect import predict_directly

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


@pytest.mark.parametrize("kind", MODELS)
async def test_direct_answers_are_the_wrappers(kind: str, tmp_path: Path) -> None:
    trained, x = MODELS[kind]()
    model = await loaded(trained, tmp_path)
    estimator = model._model
    cls = type(estimator)
    x = x.astype(np.float32)
    assert predict_directly(model)
    assert estimator.predict.__func__ is not cls.predict  # the direct one answers
    for rows in (x, x[:1], x[17:18]):
        ours, theirs = estimator.predict(rows), cls.predict(estimator, rows)
        assert ours.dtype == theirs.dtype
        np.testing.assert_array_equal(ours, theirs)
        if kind != "regressor":  # multi:softmax's probabilities come from the wrapper
            np.testing.assert_array_equal(
                estimator.predict_proba(rows), cls.predict_proba(estimator, rows)
            )
    # Through the runtime, as requests reach it.
    response = await model.predict(request(x, "predict"))
    (out,) = response.outputs
    np.testing.assert_array_equal(np.ravel(out.data.root), np.ravel(cls.predict(estimator, x)))


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

    joblib.dump(LogisticRegression(max_iter=500).fit(*IRIS), tmp_path / "model.joblib")
    settings = ModelSettings(
        name="s",
        implementation=SKLearnModel,
        parameters=ModelParameters(uri=str(tmp_path / "model.joblib")),
    )
    sklearn_model = SKLearnModel(settings)
    assert await sklearn_model.load()
    assert not predict_directly(sklearn_model)
