"""`modelyard new --template no-code` for the LightGBM, CatBoost, MLflow and ONNX
runtimes: once the artifact its README asks for is dropped in, each folder validates
and passes its own smoke test (the model loads and answers the declaration's example
with the declared outputs)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import catboost
import lightgbm as lgb
import pytest
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from tests.support.declarations import run_cli, run_pytest

X, Y = load_iris(return_X_y=True)


def lightgbm_artifact(folder: Path) -> None:
    params = {"objective": "multiclass", "num_class": 3, "verbose": -1, "num_threads": 1}
    lgb.train(params, lgb.Dataset(X, Y), num_boost_round=3).save_model(str(folder / "model.txt"))


def catboost_artifact(folder: Path) -> None:
    model = catboost.CatBoostClassifier(
        iterations=5, depth=2, verbose=False, thread_count=1, allow_writing_files=False
    )
    model.fit(X, Y).save_model(str(folder / "model.cbm"))


def mlflow_artifact(folder: Path) -> None:
    import mlflow.sklearn
    from mlflow.models import infer_signature

    model = LogisticRegression(max_iter=1000).fit(X, Y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow.sklearn.save_model(model, folder / "model", signature=infer_signature(X, Y))


def onnx_artifact(folder: Path) -> None:
    model = LogisticRegression(max_iter=1000).fit(X, Y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onx = convert_sklearn(
            model,
            initial_types=[("float_input", FloatTensorType([None, 4]))],
            options={"zipmap": False},
            target_opset=17,
        )
    (folder / "model.onnx").write_bytes(onx.SerializeToString())


ARTIFACTS: dict[str, tuple[str, Callable[[Path], None]]] = {
    "lightgbm": ("model.txt", lightgbm_artifact),
    "catboost": ("model.cbm", catboost_artifact),
    "mlflow": ("model", mlflow_artifact),
    "onnx": ("model.onnx", onnx_artifact),
}


@pytest.mark.parametrize("runtime", list(ARTIFACTS))
def test_new_no_code_folder_validates_and_answers_its_example(runtime: str, tmp_path: Path) -> None:
    name = f"iris-{runtime}"
    made = run_cli("new", name, "--runtime", runtime, "--template", "no-code",
                   "--dir", str(tmp_path))  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    folder = tmp_path / name
    artifact, train = ARTIFACTS[runtime]
    before = run_cli("validate", str(folder))
    assert before.returncode == 2
    assert f"/model/uri: {artifact} does not exist in {folder}" in before.stdout
    assert f"runtime: {runtime}" in (folder / "model.yaml").read_text()
    train(folder)
    after = run_cli("validate", str(folder))
    assert after.returncode == 0, after.stdout + after.stderr
    own = run_pytest(folder)
    out, _ = own.communicate(timeout=240)
    assert own.returncode == 0, out
    assert "1 passed" in out
