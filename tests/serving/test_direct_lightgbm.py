"""LightGBM models answered directly: MLServer's LightGBM runtime, loaded as the
registry loads it, gives exactly the answers of ``Booster.predict`` for every kind of
booster it serves, and calls the direct path does not cover still go to the booster."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest
from mlserver.settings import ModelParameters, ModelSettings
from mlserver_lightgbm import LightGBMModel

from modelyard.serving.direct import predict_directly
from tests.serving.test_direct import BREAST, DIABETES, IRIS, assert_served_as_library

BASE = {"verbose": -1, "num_threads": 1, "num_leaves": 7}


def train(params: dict, data: tuple[np.ndarray, np.ndarray], rounds: int = 20) -> lgb.Booster:
    return lgb.train({**BASE, **params}, lgb.Dataset(*data), num_boost_round=rounds)


def early_stopped() -> lgb.Booster:
    x, y = BREAST
    booster = lgb.train(
        {**BASE, "objective": "binary", "learning_rate": 0.5},
        lgb.Dataset(x[::2], y[::2]),
        num_boost_round=200,
        valid_sets=[lgb.Dataset(x[1::2], y[1::2])],
        callbacks=[lgb.early_stopping(2, verbose=False)],
        keep_training_booster=True,  # keeps the trees past the best iteration
    )
    # Booster.predict uses the trees up to the best iteration only: so must we.
    assert 0 < booster.best_iteration < booster.current_iteration()
    return booster


MODELS: dict[str, tuple[Callable[[], lgb.Booster], np.ndarray]] = {
    "binary": (lambda: train({"objective": "binary"}, BREAST), BREAST[0]),
    "multiclass": (lambda: train({"objective": "multiclass", "num_class": 3}, IRIS), IRIS[0]),
    "regression": (lambda: train({"objective": "regression"}, DIABETES), DIABETES[0]),
}


async def loaded(booster: lgb.Booster, tmp_path: Path) -> LightGBMModel:
    """The booster saved and loaded by MLServer's LightGBM runtime."""
    uri = tmp_path / "model.txt"
    booster.save_model(str(uri))
    settings = ModelSettings(
        name="m", implementation=LightGBMModel, parameters=ModelParameters(uri=str(uri))
    )
    model = LightGBMModel(settings)
    assert await model.load()
    return model


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
async def test_direct_answers_are_the_boosters(kind: str, dtype: type, tmp_path: Path) -> None:
    make, x = MODELS[kind]
    await assert_served_as_library(await loaded(make(), tmp_path), x.astype(dtype), "predict")


async def test_an_early_stopped_booster_answers_from_its_best_iteration(tmp_path: Path) -> None:
    # A saved booster holds the trees up to its best iteration only; one kept in memory
    # (a runtime that trains, or loads it its own way) holds them all.
    make, x = MODELS["binary"]
    model = await loaded(make(), tmp_path)
    model._model = early_stopped()
    await assert_served_as_library(model, x, "predict")


async def test_calls_it_does_not_cover_go_to_the_booster(tmp_path: Path) -> None:
    make, x = MODELS["multiclass"]
    model = await loaded(make(), tmp_path)
    assert predict_directly(model)
    booster = model._model
    # Keyword arguments, integers and lists are the booster's own.
    raw = booster.predict(x[:3], raw_score=True)
    assert raw.shape == (3, 3)
    np.testing.assert_array_equal(raw, lgb.Booster.predict(booster, x[:3], raw_score=True))
    ints = x[:3].astype(np.int64)
    np.testing.assert_array_equal(booster.predict(ints), lgb.Booster.predict(booster, ints))
    np.testing.assert_array_equal(
        booster.predict(x[:3].tolist()), lgb.Booster.predict(booster, x[:3])
    )
    # The wrong width is refused as the booster refuses it.
    with pytest.raises(lgb.basic.LightGBMError):
        booster.predict(x[:3, :2])


async def test_switched_off_the_booster_predicts(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MODELYARD_DIRECT_PREDICT", "off")
    make, _ = MODELS["binary"]
    model = await loaded(make(), tmp_path)
    assert not predict_directly(model)
    assert model._model.predict.__func__ is lgb.Booster.predict
