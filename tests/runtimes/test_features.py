"""Feature-enriched predictions called directly: ids in, one row per id out, from
SQLite, DuckDB and a real PostgreSQL server."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from mlserver.errors import InferenceError
from modelyard_runtimes.errors import FeatureSourceError
from modelyard_runtimes.predictor import PredictorPipeline

from modelyard.declarations.folders import load_model_folder
from modelyard.declarations.integrity import IntegrityError
from tests.runtimes import folders
from tests.runtimes.conftest import ids_input, is_nan, output, v2_request
from tests.support.postgres import PostgresServer


@pytest.fixture(params=["sqlite", "duckdb", "postgresql"])
def source(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(URL as declared, URL to fill and inspect the database with)."""
    if request.param == "sqlite":
        declared, absolute = "sqlite:///features.db", f"sqlite:///{tmp_path}/scorer/features.db"
    elif request.param == "duckdb":
        declared = absolute = f"duckdb:///{tmp_path}/features.duckdb"
    else:
        postgres: PostgresServer = request.getfixturevalue("postgres")
        declared = absolute = postgres.create_database("features_direct")
    folders.fill_profiles(absolute)
    return declared, absolute


async def test_ids_in_request_order_with_unknown_and_hostile_ids(
    tmp_path: Path, load_runtime, source: tuple[str, str]
) -> None:
    declared, url = source
    model = await load_runtime(folders.scorer(tmp_path / "scorer", declared))
    ids = ["u07", "nobody", "u00", *folders.HOSTILE_IDS, "u07", "u39"]
    response = await model.predict(v2_request(folders_ids := ids_input(ids)))
    assert folders_ids["data"] == ids  # the request is not modified

    assert [o.name for o in response.outputs] == ["user_id", "score", "band", "missing"]
    assert output(response, "user_id") == ids
    missing = output(response, "missing")
    assert missing == [False, True, False, True, True, True, False, False]
    scores = output(response, "score")
    known = [i for i, m in zip(ids, missing, strict=True) if not m]
    assert [s for s, m in zip(scores, missing, strict=True) if not m] == pytest.approx(
        folders.expected_scores(known)
    )
    assert all(is_nan([s for s, m in zip(scores, missing, strict=True) if m]))
    assert output(response, "band") == ["low", "", "low", "", "", "", "low", "high"]
    # The hostile ids were values, not SQL.
    assert folders.profile_count(url) == len(folders.PROFILES)


async def test_no_known_ids_and_no_ids(tmp_path: Path, load_runtime) -> None:
    folders.fill_profiles(f"sqlite:///{tmp_path}/scorer/features.db")
    model = await load_runtime(folders.scorer(tmp_path / "scorer", "sqlite:///features.db"))
    response = await model.predict(v2_request(ids_input(["x", "y"])))
    assert output(response, "missing") == [True, True]
    assert output(response, "band") == ["", ""]
    response = await model.predict(v2_request(ids_input([])))
    assert output(response, "user_id") == []


async def test_integer_keys(tmp_path: Path, load_runtime) -> None:
    folder = folders.scorer(tmp_path / "accounts", "sqlite:///accounts.db", name="accounts")
    engine = sa.create_engine(f"sqlite:///{folder}/accounts.db")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE profiles (n INTEGER PRIMARY KEY, age INT, spend REAL)"))
        conn.execute(sa.text("INSERT INTO profiles VALUES (7, 27, 70.5), (9, 29, 90.5)"))
    engine.dispose()
    (folder / "features.sql").write_text("SELECT n AS user_id, age, spend FROM profiles")
    model = await load_runtime(folder)
    response = await model.predict(v2_request(ids_input([9, 8, 7], datatype="INT64")))
    # Declared BYTES in predictions.columns: the ids come back as text.
    assert output(response, "user_id") == ["9", "8", "7"]
    assert output(response, "missing") == [False, True, False]


async def test_the_request_must_carry_the_key(tmp_path: Path, load_runtime) -> None:
    folders.fill_profiles(f"sqlite:///{tmp_path}/scorer/features.db")
    model = await load_runtime(folders.scorer(tmp_path / "scorer", "sqlite:///features.db"))
    with pytest.raises(InferenceError, match="missing input 'user_id'; send the user_id values"):
        await model.predict(v2_request(ids_input(["u01"], name="id")))
    with pytest.raises(InferenceError, match="ids are BYTES or integers"):
        await model.predict(v2_request(ids_input([1.5], datatype="FP32")))


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT age, spend FROM profiles", "it must select a column 'user_id'"),
        ("SELECT * FROM no_such_table", "no such table: no_such_table"),
    ],
)
async def test_a_query_that_cannot_run_refuses_to_load(
    tmp_path: Path, load_runtime, sql: str, message: str
) -> None:
    folders.fill_profiles(f"sqlite:///{tmp_path}/scorer/features.db")
    folder = folders.scorer(tmp_path / "scorer", "sqlite:///features.db")
    (folder / "features.sql").write_text(sql)
    with pytest.raises(RuntimeError) as refused:
        await load_runtime(folder)
    assert f"features.sql does not run on sqlite:///{folder}/features.db" in str(refused.value)
    assert message in str(refused.value)


async def test_a_missing_database_file_is_not_created(tmp_path: Path, load_runtime) -> None:
    folder = folders.scorer(tmp_path / "scorer", "${NO_SUCH_VARIABLE:-sqlite:///absent.db}")
    with pytest.raises(FileNotFoundError, match=r"absent.db does not exist"):
        await load_runtime(folder)
    assert not (folder / "absent.db").exists()


async def test_duplicate_rows_per_key_are_the_models_fault(tmp_path: Path, load_runtime) -> None:
    folders.fill_profiles(f"sqlite:///{tmp_path}/scorer/features.db")
    folder = folders.scorer(tmp_path / "scorer", "sqlite:///features.db")
    (folder / "features.sql").write_text(
        "SELECT user_id, age, spend FROM profiles UNION ALL SELECT user_id, age, 0 FROM profiles"
    )
    model = await load_runtime(folder)
    with pytest.raises(Exception, match="returned several rows for user_id 'u01'") as error:
        await model.predict(v2_request(ids_input(["u01"])))
    assert error.value.status_code == 500  # type: ignore[attr-defined]


async def test_a_database_gone_after_load_is_a_500_naming_it(
    tmp_path: Path, load_runtime, postgres: PostgresServer
) -> None:
    url = postgres.create_database("features_gone")
    folders.fill_profiles(url)
    model = await load_runtime(folders.scorer(tmp_path / "scorer", url))
    assert output(await model.predict(v2_request(ids_input(["u01"]))), "missing") == [False]
    postgres.create_database("features_gone")  # dropped and made again, empty
    with pytest.raises(FeatureSourceError) as error:
        await model.predict(v2_request(ids_input(["u01"])))
    assert error.value.status_code == 500
    assert str(error.value).startswith(
        f"model 'scorer': features query on {url} failed: relation \"profiles\" does not exist"
    )


def test_batch_scoring_uses_the_same_code(tmp_path: Path) -> None:
    """A chunk of the whole features query scores as the online path does."""
    folders.fill_profiles(f"sqlite:///{tmp_path}/scorer/features.db")
    settings = load_model_folder(folders.scorer(tmp_path / "scorer", "sqlite:///features.db"))
    pipeline = PredictorPipeline.from_settings(settings)
    pipeline.load()
    try:
        assert pipeline.features is not None
        chunks = list(pipeline.features.iter_all(rows_per_chunk=16))
        assert [len(c) for c in chunks] == [16, 16, 8]
        batch = pd.concat([pipeline.score(c) for c in chunks], ignore_index=True)
        assert list(batch.columns) == ["user_id", "score", "band"]
        expected = folders.expected_scores(list(batch.user_id))
        assert batch["score"].tolist() == pytest.approx(expected)
        online = pipeline.predict_ids(["u03", "zz", "u01"])
        assert online["missing"].tolist() == [False, True, False]
        by_id = batch.set_index("user_id")
        assert online["score"].iloc[[0, 2]].tolist() == by_id.loc[["u03", "u01"], "score"].tolist()
    finally:
        pipeline.close()


async def test_a_folder_name_that_needs_escaping(tmp_path: Path, load_runtime) -> None:
    folder = tmp_path / "team models #1?" / "scorer"
    folders.fill_profiles(sa.URL.create("sqlite", database=str(folder / "features.db")))
    model = await load_runtime(folders.scorer(folder, "sqlite:///features.db"))
    assert output(await model.predict(v2_request(ids_input(["u02"]))), "missing") == [False]


async def test_preprocess_sha256_is_checked_before_unpickling(tmp_path: Path, load_runtime) -> None:
    folders.fill_profiles(f"sqlite:///{tmp_path}/scorer/features.db")
    folder = folders.scorer(tmp_path / "scorer", "sqlite:///features.db")
    marker = tmp_path / "pickle-was-loaded"
    trapped = folders.booby_trapped(tmp_path / "trap", marker)
    (folder / "scaler.pkl").write_bytes(trapped.read_bytes())
    settings = json.loads((folder / "model-settings.json").read_text())
    settings["parameters"]["extra"]["features"]["preprocess_sha256"] = "cd" * 32
    (folder / "model-settings.json").write_text(json.dumps(settings))
    with pytest.raises(IntegrityError) as refused:
        await load_runtime(folder)
    assert str(refused.value) == (
        f"model 'scorer': sha256 mismatch for scaler.pkl (expected {'cd' * 32}, "
        f"got {folders.sha256(trapped)}); refusing to load"
    )
    assert not marker.exists()
