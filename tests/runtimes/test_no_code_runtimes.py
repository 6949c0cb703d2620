"""The LightGBM, CatBoost, MLflow and ONNX runtimes on a real server, over V2 REST and
gRPC: tiny models trained here answer what their own library predicts on the same rows."""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import catboost
import lightgbm as lgb
import numpy as np
import onnxruntime as ort
import pytest
import xgboost as xgb
import yaml
from onnxmltools import convert_xgboost
from onnxmltools.convert.common.data_types import FloatTensorType as XgbFloatTensorType
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from tests.support.clients import Client, expect_error, infer, make_client
from tests.support.server import ServerProcess, running

X, Y = load_iris(return_X_y=True)
ROWS = X[::10]  # 15 rows of every class


def declare(folder: Path, runtime: str, uri: str, **keys: Any) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    decl = {"name": folder.name, "version": "1", "runtime": runtime, "model": {"uri": uri}}
    decl.update(keys)
    (folder / "model.yaml").write_text(yaml.safe_dump(decl, sort_keys=False))


def tensor(name: str, datatype: str, shape: list[int]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape}


def example(name: str, datatype: str) -> dict[str, Any]:
    return {"inputs": [{**tensor(name, datatype, [1, 4]), "data": [5.1, 3.5, 1.4, 0.2]}]}


def onnx_bytes(model: LogisticRegression, input_name: str = "float_input") -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onx = convert_sklearn(
            model,
            initial_types=[(input_name, FloatTensorType([None, 4]))],
            options={id(model): {"zipmap": False}},
            target_opset=17,
        )
    return onx.SerializeToString()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("no-code") / "models"
    fp64 = [tensor("input-0", "FP64", [-1, 4])]

    booster = lgb.train(
        {"objective": "multiclass", "num_class": 3, "num_leaves": 4, "verbose": -1,
         "num_threads": 1},
        lgb.Dataset(X, Y),
        num_boost_round=5,
    )  # fmt: skip
    declare(
        root / "iris-lgb", "lightgbm", "model.txt", inputs=fp64,
        outputs=[tensor("predict", "FP64", [-1, 3])], example=example("input-0", "FP64"),
    )  # fmt: skip
    booster.save_model(str(root / "iris-lgb" / "model.txt"))

    cat = catboost.CatBoostClassifier(
        iterations=10, depth=2, verbose=False, thread_count=1, allow_writing_files=False
    )
    cat.fit(X, Y)
    declare(
        root / "iris-cat", "catboost", "model.cbm", inputs=fp64,
        outputs=[tensor("predict", "INT64", [-1, 1])], example=example("input-0", "FP64"),
    )  # fmt: skip
    cat.save_model(str(root / "iris-cat" / "model.cbm"))

    logistic = LogisticRegression(max_iter=1000).fit(X, Y)
    declare(
        root / "iris-onnx", "onnx", "model.onnx",
        inputs=[tensor("float_input", "FP32", [-1, 4])],
        outputs=[tensor("label", "INT64", [-1]), tensor("probabilities", "FP32", [-1, 3])],
        example=example("float_input", "FP32"),
    )  # fmt: skip
    (root / "iris-onnx" / "model.onnx").write_bytes(onnx_bytes(logistic))
    # No signature declared: the graph's is served.
    declare(root / "iris-onnx-bare", "onnx", "model.onnx")
    (root / "iris-onnx-bare" / "model.onnx").write_bytes(onnx_bytes(logistic, "x"))
    # A declaration the graph contradicts: refused at load, naming the difference.
    declare(root / "iris-onnx-wrong", "onnx", "model.onnx",
            inputs=[tensor("float_input", "FP64", [-1, 4])])  # fmt: skip
    (root / "iris-onnx-wrong" / "model.onnx").write_bytes(onnx_bytes(logistic))

    # XGBoost exported to ONNX by onnxmltools: served by onnxruntime, answering as
    # XGBoost's own predict_proba.
    boosted = xgb.XGBClassifier(n_estimators=8, max_depth=3, n_jobs=1).fit(X, Y)
    declare(
        root / "iris-onnx-xgb", "onnx", "model.onnx",
        inputs=[tensor("input", "FP32", [-1, 4])],
        outputs=[tensor("label", "INT64", [-1]), tensor("probabilities", "FP32", [-1, 3])],
        example=example("input", "FP32"),
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exported = convert_xgboost(
            boosted, initial_types=[("input", XgbFloatTensorType([None, 4]))], target_opset=15
        )
    (root / "iris-onnx-xgb" / "model.onnx").write_bytes(exported.SerializeToString())

    import mlflow.sklearn
    from mlflow.models import infer_signature

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow.sklearn.save_model(
            logistic, root / "iris-mlflow" / "model", signature=infer_signature(X, Y)
        )
    declare(root / "iris-mlflow", "mlflow", "model")
    import mlflow.lightgbm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow.lightgbm.save_model(
            booster, root / "iris-mlflow-lgb" / "model",
            signature=infer_signature(X, booster.predict(X)),
        )  # fmt: skip
    declare(root / "iris-mlflow-lgb", "mlflow", "model")

    session = ort.InferenceSession(
        root / "iris-onnx" / "model.onnx", providers=["CPUExecutionProvider"]
    )
    label, proba = session.run(None, {"float_input": ROWS.astype(np.float32)})
    return {
        "root": root,
        "lightgbm": booster.predict(ROWS),
        "catboost": cat.predict(ROWS),
        "sklearn": logistic.predict(ROWS),
        "onnx": (label, proba),
        "xgboost": (
            boosted.predict(ROWS.astype(np.float32)),
            boosted.predict_proba(ROWS.astype(np.float32)),
        ),
    }


@pytest.fixture(scope="module")
def server(
    models: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("no-code-server") / "serve.log"
    with running(ServerProcess(models["root"], log, extra_args=["--no-watch"])) as server:
        yield server


@pytest.fixture(params=["http", "grpc"])
def client(request: pytest.FixtureRequest, server: ServerProcess) -> Client:
    return make_client(request.param, server)


def test_lightgbm_answers_as_its_booster(client: Client, models: dict[str, Any]) -> None:
    result = infer(client, "iris-lgb", {"input-0": (ROWS, "FP64")})
    assert np.array_equal(result.as_numpy("predict"), models["lightgbm"])


def test_catboost_answers_as_its_classifier(client: Client, models: dict[str, Any]) -> None:
    result = infer(client, "iris-cat", {"input-0": (ROWS, "FP64")})
    assert result.as_numpy("predict").ravel().tolist() == models["catboost"].ravel().tolist()


def test_onnx_answers_as_onnxruntime_and_scikit_learn(
    client: Client, models: dict[str, Any]
) -> None:
    rows = ROWS.astype(np.float32)
    result = infer(client, "iris-onnx", {"float_input": (rows, "FP32")})
    label, proba = models["onnx"]
    assert np.array_equal(result.as_numpy("label"), label)
    assert np.array_equal(result.as_numpy("probabilities"), proba)
    assert result.as_numpy("label").tolist() == models["sklearn"].tolist()
    only = infer(client, "iris-onnx", {"float_input": (rows, "FP32")}, outputs=["label"])
    assert only.as_numpy("probabilities") is None
    assert np.array_equal(only.as_numpy("label"), label)


def test_onnx_exported_from_xgboost_answers_as_xgboost(
    client: Client, models: dict[str, Any]
) -> None:
    result = infer(client, "iris-onnx-xgb", {"input": (ROWS.astype(np.float32), "FP32")})
    label, proba = models["xgboost"]
    assert result.as_numpy("label").tolist() == label.tolist()
    # onnxruntime sums the trees in float32 as XGBoost does, in another order.
    np.testing.assert_allclose(result.as_numpy("probabilities"), proba, rtol=1e-5, atol=1e-6)


def test_onnx_models_answer_grpc_from_numpy(server: ServerProcess) -> None:
    """A graph of one numeric input and numeric outputs answers gRPC calls of one raw
    input through the lane, once it answered probes as predict does (the answers above
    are those calls)."""
    for name in ("iris-onnx", "iris-onnx-bare", "iris-onnx-xgb"):
        assert f"model '{name}': gRPC calls of one raw input answered from NumPy" in server.log()


def test_onnx_refuses_the_wrong_datatype_with_a_400(client: Client) -> None:
    message = expect_error(
        client,
        lambda: infer(client, "iris-onnx", {"float_input": (ROWS, "FP64")}),
        400, "INVALID_ARGUMENT", "float_input", "FP32",
    )  # fmt: skip
    assert "FP64" in message


def test_onnx_without_a_declared_signature_serves_the_graphs(
    client: Client, models: dict[str, Any]
) -> None:
    meta = client.get_model_metadata("iris-onnx-bare")
    if not isinstance(meta, dict):
        from google.protobuf.json_format import MessageToDict

        meta = MessageToDict(meta, preserving_proto_field_name=True)
    assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in meta["inputs"]] == [
        ("x", "FP32", [-1, 4])
    ]
    assert [(t["name"], t["datatype"]) for t in meta["outputs"]] == [
        ("label", "INT64"), ("probabilities", "FP32"),
    ]  # fmt: skip
    result = infer(client, "iris-onnx-bare", {"x": (ROWS.astype(np.float32), "FP32")})
    assert np.array_equal(result.as_numpy("probabilities"), models["onnx"][1])
    # The graph's signature is held to requests as a declared one is: a 400 naming the input.
    expect_error(
        client,
        lambda: infer(client, "iris-onnx-bare", {"x": (ROWS[:, :3].astype(np.float32), "FP32")}),
        400, "INVALID_ARGUMENT", "x",
    )  # fmt: skip


def test_onnx_declaration_the_graph_contradicts_is_refused_at_load(
    server: ServerProcess,
) -> None:
    status = {s["name"]: s for s in server.status()["models"]}
    wrong = status["iris-onnx-wrong"]
    assert wrong["state"] == "failed"
    assert (
        "inputs 'float_input' is FP32 in the graph (tensor(float)), declared FP64" in wrong["error"]
    )
    assert status["iris-onnx"]["state"] == "ready"


def metadata(client: Client, model: str) -> dict[str, Any]:
    meta = client.get_model_metadata(model)
    if isinstance(meta, dict):
        return meta
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(meta, preserving_proto_field_name=True)


@pytest.mark.parametrize(
    ("model", "expected"), [("iris-mlflow", "sklearn"), ("iris-mlflow-lgb", "lightgbm")]
)
def test_mlflow_model_answers_as_its_library(
    client: Client, models: dict[str, Any], server: ServerProcess, model: str, expected: str
) -> None:
    # The MLmodel's signature is the V2 signature (the declaration has none).
    (spec,) = metadata(client, model)["inputs"]
    assert (spec["datatype"], [int(d) for d in spec["shape"]]) == ("FP64", [-1, 4])
    result = infer(client, model, {spec["name"]: (ROWS, "FP64")})
    (output,) = metadata(client, model)["outputs"]
    assert np.array_equal(result.as_numpy(output["name"]).ravel(), models[expected].ravel())
    # Served by the native flavour, which answered as pyfunc does on probes at load.
    assert f"model '{model}': predicting with its {expected} flavour" in server.log()
    # The signature is held to requests: a 400 naming the input, before the model runs.
    expect_error(
        client,
        lambda: infer(client, model, {spec["name"]: (ROWS[:, :3], "FP64")}),
        400, "INVALID_ARGUMENT", spec["name"],
    )  # fmt: skip


def test_mlflow_pyfunc_answers_as_the_native_flavour(
    models: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The same folders with the native flavours off: pyfunc's answers are the same."""
    root = tmp_path_factory.mktemp("pyfunc")
    for model in ("iris-mlflow", "iris-mlflow-lgb"):
        shutil.copytree(models["root"] / model, root / "models" / model)
    env = {"MODELYARD_DIRECT_PREDICT": "off"}
    srv = ServerProcess(root / "models", root / "serve.log", extra_args=["--no-watch"], env=env)
    srv.start()
    try:
        srv.wait_ready(timeout=300)  # MLflow's imports, on a machine others load too
        for model, expected in (("iris-mlflow", "sklearn"), ("iris-mlflow-lgb", "lightgbm")):
            client = make_client("http", srv)
            (spec,) = metadata(client, model)["inputs"]
            (output,) = metadata(client, model)["outputs"]
            result = infer(client, model, {spec["name"]: (ROWS, "FP64")})
            assert np.array_equal(result.as_numpy(output["name"]).ravel(), models[expected].ravel())
        assert "flavour" not in srv.log()
    except BaseException:
        print(srv.log())
        raise
    finally:
        srv.stop()
