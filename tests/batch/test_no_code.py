"""Batch scoring without a predictor class: a scikit-learn, an XGBoost and a LightGBM
model declared with features and predictions, scored by their own MLServer runtimes
from SQLite and PostgreSQL, their stored predictions equal to the library's own
predict and predict_proba on the same rows; and the same entity online and in batch."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import joblib
import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
import xgboost as xgb
import yaml
from click.testing import CliRunner
from mlserver.types import InferenceRequest
from modelyard_runtimes.lookup import LookupRuntime
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from modelyard.batch.run import BatchError, BatchJob, RunOptions, Shard
from modelyard.cli import main
from modelyard.declarations.companions import lookup_settings
from modelyard.declarations.folders import load_model_folder
from modelyard.declarations.load import declaration_problems
from modelyard.mlserver_internals import settings_folder
from modelyard.store.tables import table_name
from tests.batch.conftest import database_url

KEY = "flower_id"
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
PROBA = ["p_setosa", "p_versicolor", "p_virginica"]
ROWS = 1500  # iris ten times over, jittered: several chunks


def flowers() -> pd.DataFrame:
    x, _ = load_iris(return_X_y=True)
    rng = np.random.default_rng(0)
    repeated = np.tile(x, (ROWS // len(x), 1)) + rng.normal(0, 0.3, (ROWS, 4)).round(3)
    frame = pd.DataFrame(repeated, columns=FEATURES)
    frame.insert(0, KEY, [f"f{i:05d}" for i in range(ROWS)])
    return frame


def sklearn_model(folder: Path) -> tuple[str, object]:
    x, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=500).fit(x, y)
    joblib.dump(model, folder / "model.joblib")
    return "model.joblib", model


def xgboost_model(folder: Path) -> tuple[str, object]:
    x, y = load_iris(return_X_y=True)
    model = xgb.XGBClassifier(n_estimators=20, max_depth=3, random_state=0, n_jobs=1).fit(x, y)
    model.save_model(folder / "model.ubj")
    return "model.ubj", model


def lightgbm_model(folder: Path) -> tuple[str, object]:
    x, y = load_iris(return_X_y=True)
    params = {"objective": "multiclass", "num_class": 3, "num_threads": 1, "verbose": -1}
    booster = lgb.train(params, lgb.Dataset(x, y), num_boost_round=20)
    booster.save_model(str(folder / "model.bst"))
    return "model.bst", booster


TRAINERS: dict[str, Callable[[Path], tuple[str, object]]] = {
    "sklearn": sklearn_model,
    "xgboost": xgboost_model,
    "lightgbm": lightgbm_model,
}


def declaration(runtime: str, uri: str, **extra: object) -> dict:
    return {
        "name": "iris",
        "version": "1",
        "runtime": runtime,
        "model": {"uri": uri},
        "features": {"sql": "features.sql", "source": "${FEATURES_DB_URL}", "key": KEY},
        "predictions": {
            "columns": {KEY: "BYTES", "label": "INT64", **{p: "FP64" for p in PROBA}},
            "outputs": {"predict": "label", "predict_proba": PROBA},
            "store": "${PREDICTIONS_DB_URL}",
            **extra,
        },
    }


@pytest.fixture(params=["sqlite", "postgresql"])
def databases(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, str]:
    """A features database holding the flowers, and a store; in SQLite or PostgreSQL."""
    source = database_url(request, tmp_path, request.param, "features")
    store = database_url(request, tmp_path, request.param, "store")
    fill_features(source)
    monkeypatch.setenv("FEATURES_DB_URL", source)
    monkeypatch.setenv("PREDICTIONS_DB_URL", store)
    return source, store


def fill_features(url: str) -> None:
    engine = sa.create_engine(url)
    try:
        flowers().to_sql("flowers", engine, index=False)
    finally:
        engine.dispose()


def make_folder(tmp_path: Path, runtime: str, **extra: object) -> tuple[Path, object]:
    folder = tmp_path / runtime
    folder.mkdir()
    uri, model = TRAINERS[runtime](folder)
    (folder / "features.sql").write_text(f"SELECT {KEY}, {', '.join(FEATURES)} FROM flowers\n")
    (folder / "model.yaml").write_text(yaml.safe_dump(declaration(runtime, uri, **extra)))
    return folder, model


def stored(store: str, run_id: str) -> pd.DataFrame:
    engine = sa.create_engine(store)
    try:
        table = sa.Table(table_name("iris", "1"), sa.MetaData(), autoload_with=engine)
        with engine.connect() as conn:
            rows = conn.execute(sa.select(table).where(table.c.run_id == run_id)).mappings().all()
    finally:
        engine.dispose()
    return (
        pd.DataFrame([dict(r) for r in rows], columns=list(table.c.keys()))
        .set_index(KEY)
        .sort_index()
    )


def scored_tonight(folder: Path, store: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``folder`` batch-scored as run "night": its stored rows and the flowers, both
    by key, every flower scored."""
    assert declaration_problems(folder / "model.yaml") == []
    result = BatchJob(folder).run(RunOptions(run_id="night", chunk_rows=400, bar=False))
    assert result.error is None, result.error
    assert result.rows == ROWS
    rows = stored(store, "night")
    data = flowers().set_index(KEY).sort_index()
    assert list(rows.index) == list(data.index)
    return rows, data


@pytest.mark.parametrize("runtime", ["sklearn", "xgboost"])
def test_a_no_code_model_is_batch_scored_as_its_library_predicts(
    tmp_path: Path, databases: tuple[str, str], runtime: str
) -> None:
    folder, model = make_folder(tmp_path, runtime)
    rows, data = scored_tonight(folder, databases[1])
    x = data[FEATURES].to_numpy(np.float64)
    assert np.array_equal(rows["label"].to_numpy(), model.predict(x))  # type: ignore[attr-defined]
    proba = model.predict_proba(x)  # type: ignore[attr-defined]
    got = rows[PROBA].to_numpy().astype(proba.dtype)
    assert np.array_equal(got, proba), np.abs(got - proba).max()


def test_a_no_code_lightgbm_booster_is_batch_scored_as_it_predicts(
    tmp_path: Path, databases: tuple[str, str]
) -> None:
    """MLServer's LightGBM runtime answers one output, ``predict``: a multiclass
    booster's probabilities, a column per class."""
    folder, booster = make_folder(
        tmp_path, "lightgbm",
        columns={KEY: "BYTES", **{p: "FP64" for p in PROBA}}, outputs={"predict": PROBA},
    )  # fmt: skip
    rows, data = scored_tonight(folder, databases[1])
    proba = booster.predict(data[FEATURES].to_numpy(np.float64))  # type: ignore[attr-defined]
    assert proba.shape == (ROWS, 3)
    got = rows[PROBA].to_numpy().astype(proba.dtype)
    assert np.array_equal(got, proba), np.abs(got - proba).max()


def test_shards_of_a_no_code_model_read_their_part_and_add_up(
    tmp_path: Path, databases: tuple[str, str]
) -> None:
    folder, _ = make_folder(tmp_path, "sklearn")
    whole = BatchJob(folder).run(RunOptions(run_id="whole", bar=False))
    reads = []
    for index in range(3):
        part = BatchJob(folder).run(
            RunOptions(run_id="split", shard=Shard(index, 3), chunk_rows=250, bar=False)
        )
        assert part.error is None, part.error
        reads.append(part.read)
    assert sum(reads) == ROWS and max(reads) < ROWS  # each shard read only its own rows
    assert whole.run is not None and part.run is not None and part.run.rows == ROWS
    pd.testing.assert_frame_equal(
        stored(databases[1], "split").drop(columns=["run_id", "predicted_at"]),
        stored(databases[1], "whole").drop(columns=["run_id", "predicted_at"]),
    )


async def test_the_same_entity_online_and_in_batch_is_the_same_number(
    tmp_path: Path, databases: tuple[str, str]
) -> None:
    folder, _ = make_folder(tmp_path, "sklearn")
    # A batch run drives the runtime on an event loop of its own: off this test's loop.
    result = await asyncio.to_thread(BatchJob(folder).run, RunOptions(run_id="night", bar=False))
    assert result.error is None, result.error
    settings = load_model_folder(folder)
    lookup = lookup_settings(settings)
    assert lookup is not None and lookup.name == "iris-lookup"
    assert settings_folder(lookup) == folder.resolve()
    by_id = LookupRuntime(lookup)
    assert await by_id.load()
    entity = "f00042"
    try:
        answer = await by_id.predict(
            InferenceRequest.model_validate(
                {"inputs": [{"name": KEY, "datatype": "BYTES", "shape": [1], "data": [entity]}]}
            )
        )
    finally:
        await by_id.unload()
    looked_up = {o.name: o.data.root[0] for o in answer.outputs}
    # Online: the served runtime itself, sent the entity's features as a client would.
    row = flowers().set_index(KEY).loc[entity, FEATURES].to_numpy(np.float64)
    from mlserver_sklearn import SKLearnModel

    served = SKLearnModel(settings)
    assert await served.load()
    online = await served.predict(
        InferenceRequest.model_validate(
            {
                "inputs": [
                    {"name": "input-0", "datatype": "FP64", "shape": [1, 4], "data": row.tolist()}
                ],
                "outputs": [{"name": "predict"}, {"name": "predict_proba"}],
            }
        )
    )
    values = {o.name: o.data.root for o in online.outputs}
    assert looked_up["label"] == values["predict"][0]
    assert [looked_up[p] for p in PROBA] == values["predict_proba"]


def test_a_no_code_model_without_outputs_is_refused_with_the_fix(
    tmp_path: Path, databases: tuple[str, str]
) -> None:
    folder, _ = make_folder(tmp_path, "sklearn")
    decl = yaml.safe_load((folder / "model.yaml").read_text())
    del decl["predictions"]["outputs"]
    (folder / "model.yaml").write_text(yaml.safe_dump(decl))
    problems = declaration_problems(folder / "model.yaml")
    assert [p.pointer for p in problems] == ["/predictions"]
    assert "predictions.outputs" in problems[0].message
    decl["predictions"]["outputs"] = {"predict": "labl"}
    (folder / "model.yaml").write_text(yaml.safe_dump(decl))
    problems = declaration_problems(folder / "model.yaml")
    assert [p.pointer for p in problems] == ["/predictions/outputs/predict"]
    assert "'labl' is not one of predictions.columns" in problems[0].message
    decl["predictions"]["outputs"] = {"predict": "label", "predict_proba": ["label", "p_setosa"]}
    decl["features"]["columns"] = ["petal_width", "petal_width"]
    (folder / "model.yaml").write_text(yaml.safe_dump(decl))
    problems = declaration_problems(folder / "model.yaml")
    assert [(p.pointer, p.message) for p in problems] == [
        ("/features/columns/1", "'petal_width' is listed twice"),
    ]
    del decl["features"]["columns"]
    (folder / "model.yaml").write_text(yaml.safe_dump(decl))
    problems = declaration_problems(folder / "model.yaml")
    assert [(p.pointer, p.message) for p in problems] == [
        ("/predictions/outputs/predict_proba/0", "'label' is already filled by predict"),
    ]


def test_a_model_without_features_is_refused_naming_what_to_add(tmp_path: Path) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    uri, _ = sklearn_model(folder)
    (folder / "model.yaml").write_text(
        yaml.safe_dump(
            {"name": "iris", "version": "1", "runtime": "sklearn", "model": {"uri": uri}}
        )
    )
    with pytest.raises(BatchError, match=r"add features \(sql, source, key\) and predictions"):
        BatchJob(folder)


def test_validate_runs_the_features_query_and_catches_columns_that_do_not_fit(
    tmp_path: Path, databases: tuple[str, str]
) -> None:
    folder, _ = make_folder(tmp_path, "sklearn")
    decl = yaml.safe_load((folder / "model.yaml").read_text())
    decl["inputs"] = [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}]
    (folder / "model.yaml").write_text(yaml.safe_dump(decl))
    (folder / "features.sql").write_text(
        f"SELECT {KEY}, {', '.join(FEATURES)} FROM flowers WHERE {KEY} LIKE 'f%'\n"
    )
    result = CliRunner().invoke(main, ["validate", str(folder)])
    assert result.exit_code == 0, result.output
    # One column too many, and a text column where the model takes numbers.
    (folder / "features.sql").write_text(
        f"SELECT {KEY}, {', '.join(FEATURES)}, {KEY} AS name FROM flowers\n"
    )
    result = CliRunner().invoke(main, ["validate", str(folder)])
    assert result.exit_code == 2
    assert "gives 5 input column(s)" in result.output
    assert "takes 4 (shape [-1, 4])" in result.output
    assert "column 'name' of features.sql is" in result.output
    assert "takes numbers" in result.output
    # features.columns picks the model's four, in its order.
    decl["features"]["columns"] = FEATURES
    (folder / "model.yaml").write_text(yaml.safe_dump(decl))
    result = CliRunner().invoke(main, ["validate", str(folder)])
    assert result.exit_code == 0, result.output
    decl["features"]["columns"] = [*FEATURES[:3], "petal"]
    (folder / "model.yaml").write_text(yaml.safe_dump(decl))
    result = CliRunner().invoke(main, ["validate", str(folder)])
    assert result.exit_code == 2 and "'petal' not returned by features.sql" in result.output


def test_features_columns_and_keep_runs_from_the_declaration(
    tmp_path: Path, databases: tuple[str, str]
) -> None:
    folder, model = make_folder(tmp_path, "sklearn", keep_runs=1)
    # A query with a column the model does not take, and its inputs in another order.
    (folder / "features.sql").write_text(
        f"SELECT {', '.join(reversed(FEATURES))}, 'x' AS note, {KEY} FROM flowers\n"
    )
    decl = yaml.safe_load((folder / "model.yaml").read_text())
    decl["features"]["columns"] = FEATURES
    (folder / "model.yaml").write_text(yaml.safe_dump(decl))
    for run_id in ("r1", "r2", "r3"):
        result = BatchJob(folder).run(RunOptions(run_id=run_id, bar=False))
        assert result.error is None, result.error
    rows = stored(databases[1], "r3")
    x = flowers().set_index(KEY).sort_index()[FEATURES].to_numpy(np.float64)
    assert np.array_equal(rows[PROBA].to_numpy(), model.predict_proba(x))  # type: ignore[attr-defined]
    assert stored(databases[1], "r1").empty and stored(databases[1], "r2").empty


CUSTOM_RUNTIME = """
import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.types import InferenceResponse


class Lengths(MLModel):
    async def load(self):
        return True

    async def predict(self, payload):
        texts = StringCodec.decode_input(payload.inputs[0])
        lengths = np.array([len(t) for t in texts], dtype=np.int64)
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output("length", lengths)],
        )
"""


def test_a_custom_runtime_scores_a_text_column(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "lengths.py").write_text(CUSTOM_RUNTIME)
    (folder / "features.sql").write_text("SELECT review_id, body FROM reviews\n")
    reviews = pd.DataFrame({"review_id": ["r1", "r2", "r3"], "body": ["good", "", "very bad"]})
    engine = sa.create_engine(f"sqlite:///{folder}/features.db")
    try:
        reviews.to_sql("reviews", engine, index=False)
    finally:
        engine.dispose()
    store = f"sqlite:///{tmp_path}/store.db"
    monkeypatch.setenv("PREDICTIONS_DB_URL", store)
    decl = {
        "name": "lengths", "version": "1", "runtime": "custom",
        "implementation": "lengths.Lengths",
        "features": {"sql": "features.sql", "source": "sqlite:///features.db",
                     "key": "review_id"},
        "predictions": {"columns": {"review_id": "BYTES", "chars": "INT64"},
                        "outputs": {"length": "chars"}, "store": "${PREDICTIONS_DB_URL}"},
    }  # fmt: skip
    (folder / "model.yaml").write_text(yaml.safe_dump(decl))
    assert declaration_problems(folder / "model.yaml") == []
    result = BatchJob(folder).run(RunOptions(run_id="r", bar=False))
    assert result.error is None, result.error
    engine = sa.create_engine(store)
    try:
        rows = pd.read_sql(f"SELECT review_id, chars FROM {table_name('lengths', '1')}", engine)
    finally:
        engine.dispose()
    assert dict(zip(rows.review_id, rows.chars, strict=True)) == {"r1": 4, "r2": 0, "r3": 8}
