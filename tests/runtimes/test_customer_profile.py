"""The customer-profile example, served from its model.yaml, answers by user id over V2."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from modelyard_runtimes.predictor import PredictorPipeline

from modelyard.declarations.folders import load_model_folder
from tests.conftest import print_log_on_failure
from tests.support.clients import ids, infer, make_client, texts
from tests.support.server import REPO, ServerProcess, running

EXAMPLE = REPO / "examples" / "customer-profile"
ARTIFACTS = ("features.db", "preprocess.pkl", "model.joblib")


@pytest.fixture(scope="module")
def example_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    absent = [name for name in ARTIFACTS if not (EXAMPLE / name).is_file()]
    assert not absent, f"{', '.join(absent)} not built in {EXAMPLE}: run `make models`"
    root = tmp_path_factory.mktemp("customer-profile")
    # A copy: a `make models` running meanwhile rewrites the artifacts in place.
    folder = shutil.copytree(
        EXAMPLE, root / EXAMPLE.name, ignore=shutil.ignore_patterns("__pycache__", "predictions.db")
    )
    with running(ServerProcess(folder, root / "serve.log", extra_args=["--no-watch"])) as server:
        yield server


@pytest.fixture
def server(
    request: pytest.FixtureRequest, example_server: ServerProcess
) -> Iterator[ServerProcess]:
    yield example_server
    print_log_on_failure(request, example_server)


def genders(folder: Path, user_ids: list[str]) -> list[str]:
    with sqlite3.connect(folder / "features.db") as db:
        known = dict(db.execute("SELECT user_id, gender FROM users"))
    return [known[u] for u in user_ids]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_answers_by_user_id(server: ServerProcess, protocol: str) -> None:
    client = make_client(protocol, server)
    requested = ["u0000042", "nobody", "1; DROP TABLE users", "u0000007"]
    result = infer(client, "gender", {"user_id": ids(*requested)})
    assert texts(result, "user_id") == requested
    assert result.as_numpy("missing").tolist() == [False, True, True, False]
    male = result.as_numpy("male_percentile")
    female = result.as_numpy("female_percentile")
    assert male.dtype == female.dtype == np.float32
    known = [0, 3]
    assert ((male[known] >= 0) & (male[known] <= 100)).all()
    # P(female) = 1 - P(male): the two rankings mirror each other.
    np.testing.assert_allclose(male[known] + female[known], 100.0, atol=0.2)
    assert np.isnan(male[[1, 2]]).all() and np.isnan(female[[1, 2]]).all()


def test_percentiles_tell_the_genders_apart(server: ServerProcess) -> None:
    user_ids = [f"u{i:07d}" for i in range(0, 5000, 10)]
    result = infer(make_client("grpc", server), "gender", {"user_id": ids(*user_ids)})
    male = result.as_numpy("male_percentile")
    is_male = np.array([g == "male" for g in genders(server.directory, user_ids)])
    # Most men rank above the median of the male score, most women below it.
    assert (male[is_male] > 50).mean() > 0.75
    assert (male[~is_male] < 50).mean() > 0.75


def test_online_and_batch_give_the_same_predictions(server: ServerProcess) -> None:
    pipeline = PredictorPipeline.from_settings(load_model_folder(server.directory))
    pipeline.load()
    try:
        assert pipeline.features is not None
        chunk = next(pipeline.features.iter_all(rows_per_chunk=200))
        batch = pipeline.score(chunk)
    finally:
        pipeline.close()
    assert list(batch.columns) == ["user_id", "male_percentile", "female_percentile"]
    result = infer(make_client("http", server), "gender", {"user_id": ids(*batch.user_id)})
    assert texts(result, "user_id") == batch.user_id.tolist()
    np.testing.assert_array_equal(result.as_numpy("male_percentile"), batch.male_percentile)
    np.testing.assert_array_equal(result.as_numpy("female_percentile"), batch.female_percentile)
