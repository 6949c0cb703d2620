"""gRPC calls answered by a model's lane (protobuf to NumPy and back) get, call for call,
MLServer's answer: the same response, status, message, trailing metadata and metrics as
a server where every call goes MLServer's way."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import grpc
import joblib
import numpy as np
import pytest
import xgboost as xgb
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc.dataplane_pb2_grpc import GRPCInferenceServiceStub
from mlserver.model import MLModel
from mlserver.settings import ModelParameters, ModelSettings, Settings
from mlserver.types import InferenceRequest, InferenceResponse, MetadataTensor, Parameters
from mlserver_sklearn import SKLearnModel
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.linear_model import LogisticRegression

from modelyard.serving.dataplane import DataPlane
from modelyard.serving.direct import DIRECT_ENV, predict_directly
from modelyard.serving.lanes import LANE_ATTR, give_lane, takes
from modelyard.serving.models import LoadedModels
from tests.quality.served import scrape
from tests.serving.test_direct import sklearn_loaded
from tests.support.server import ServerProcess

REPO = Path(__file__).resolve().parents[2]
LANE_LOG = "answered from NumPy"
X_IRIS = load_iris().data
X_CANCER = load_breast_cancer().data[:5]


def call(model: str, x: np.ndarray, datatype: str, **fields: object) -> pb.ModelInferRequest:
    """A ModelInfer request as tritonclient sends it: raw contents, shape of ``x``."""
    dtype = {"FP32": "<f4", "FP64": "<f8", "INT64": "<i8"}[datatype]
    shape = fields.pop("shape", list(x.shape))
    raw = fields.pop("raw", np.ascontiguousarray(x, dtype).tobytes())
    tensor = pb.ModelInferRequest.InferInputTensor(
        name=str(fields.pop("input", "input-0")), datatype=datatype, shape=shape
    )
    return pb.ModelInferRequest(
        model_name=model, inputs=[tensor], raw_input_contents=[raw], **fields
    )


def outcome(stub: GRPCInferenceServiceStub, request: pb.ModelInferRequest) -> tuple:
    """All a client sees of one call: code, message, response, trailing metadata."""
    try:
        response, done = stub.ModelInfer.with_call(request, metadata=[("x-tag", "t1")])
    except grpc.RpcError as e:
        return e.code(), e.details(), None, sorted(e.trailing_metadata() or ())
    return done.code(), done.details(), response, sorted(done.trailing_metadata() or ())


def write_models(root: Path) -> Path:
    """The repository's iris (scikit-learn) and breast-cancer (XGBoost) folders, and two
    without signatures: class names for classes (a BYTES output) and a regressor."""
    models = root / "models"
    for name in ("iris", "breast-cancer"):
        shutil.copytree(REPO / "model-settings" / name, models / name)
    names = models / "names"
    names.mkdir()
    species = np.array(["setosa", "versicolor", "virginica"])[load_iris().target]
    joblib.dump(LogisticRegression(max_iter=500).fit(X_IRIS, species), names / "model.joblib")
    (names / "model-settings.json").write_text(
        json.dumps(
            {
                "name": "names",
                "implementation": "mlserver_sklearn.SKLearnModel",
                "parameters": {"uri": "./model.joblib"},
            }
        )
    )
    regressor = models / "regressor"
    regressor.mkdir()
    xgb.XGBRegressor(n_estimators=10).fit(*load_diabetes(return_X_y=True)).save_model(
        regressor / "model.ubj"
    )
    (regressor / "model-settings.json").write_text(
        json.dumps(
            {
                "name": "regressor",
                "implementation": "mlserver_xgboost.XGBoostModel",
                "parameters": {"uri": "./model.ubj"},
            }
        )
    )
    return models


def cases() -> dict[str, pb.ModelInferRequest]:
    nan = X_IRIS[:2].copy()
    nan[1, 2] = np.nan
    diabetes = load_diabetes().data[:6]
    return {
        "one row": call("iris", X_IRIS[:1], "FP64"),
        "rows, with an id": call("iris", X_IRIS[::15], "FP64", id="call-7"),
        "version named": call("iris", X_IRIS[:3], "FP64", model_version="1"),
        "unknown version": call("iris", X_IRIS[:3], "FP64", model_version="9"),
        "datatype not declared": call("iris", X_IRIS[:1], "FP32"),
        "too few columns": call("iris", X_IRIS[:1, :3], "FP64"),
        "input not declared": call("iris", X_IRIS[:1], "FP64", input="x"),
        "NaN": call("iris", nan, "FP64"),
        "bytes short of the shape": call("iris", X_IRIS[:1], "FP64", shape=[2, 4]),
        "outputs requested": call(
            "iris",
            X_IRIS[:2],
            "FP64",
            outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="predict_proba")],
        ),
        "XGBoost rows": call("breast-cancer", X_CANCER, "FP32", id="b"),
        "XGBoost missing values": call(
            "breast-cancer", np.where(np.eye(5, 30) > 0, np.nan, X_CANCER), "FP32"
        ),
        "XGBoost datatype not declared": call("breast-cancer", X_CANCER, "FP64"),
        "class names": call("names", X_IRIS[::40], "FP64"),
        "class names, float32": call("names", X_IRIS[::40], "FP32"),
        "regression": call("regressor", diabetes, "FP32"),
        "integers": call("regressor", np.ones((2, 10)), "INT64"),
        "unknown model": call("nope", X_IRIS[:1], "FP64"),
    }


def counted(server: ServerProcess) -> dict[tuple[str, frozenset], float]:
    """The request counts of the models and of gRPC ModelInfer (not the timings)."""
    return {
        key: value
        for key, value in scrape(server).items()
        if (key[0].startswith("model_infer_request_") and key[0].endswith(("_total", "_count")))
        or (key[0] == "grpc_server_handled_total" and ("grpc_method", "ModelInfer") in key[1])
        or key[0] == "modelyard_requests_in_flight"
    }


def test_lane_answers_as_mlserver_does(serve_dir, tmp_path: Path) -> None:
    models = write_models(tmp_path)
    lanes = serve_dir(models, "--no-watch", "--processes", "1")
    mlserver = serve_dir(models, "--no-watch", "--processes", "1", **{DIRECT_ENV: "off"})
    for name in ("iris", "breast-cancer", "names", "regressor"):
        assert f"model '{name}': gRPC calls of one raw input {LANE_LOG}" in lanes.log()
    assert LANE_LOG not in mlserver.log()

    stubs = [GRPCInferenceServiceStub(grpc.insecure_channel(s.grpc_url)) for s in (lanes, mlserver)]
    seen = set()
    for case, request in cases().items():
        ours, theirs = (outcome(stub, request) for stub in stubs)
        assert ours == theirs, case
        seen.add(ours[0])
    # The cases cover answers and the client's errors (NaN to scikit-learn among them).
    assert seen == {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
    }
    assert counted(lanes) == counted(mlserver)
    assert any(v for (n, _), v in counted(lanes).items() if n.endswith("success_total"))


def test_calls_it_takes() -> None:
    x = X_IRIS[:2]
    assert takes(call("iris", x, "FP64"))
    assert takes(call("iris", x.astype(np.int64), "INT64"))
    typed = call("iris", x, "FP64", raw=b"")
    del typed.raw_input_contents[:]
    typed.inputs[0].contents.fp64_contents.extend(x.ravel())
    with_parameter = call("iris", x, "FP64")
    with_parameter.inputs[0].parameters["content_type"].string_param = "np"
    with_request_parameter = call("iris", x, "FP64")
    with_request_parameter.parameters["content_type"].string_param = "np"
    two_inputs = call("iris", x, "FP64")
    two_inputs.inputs.append(two_inputs.inputs[0])
    two_inputs.raw_input_contents.append(two_inputs.raw_input_contents[0])
    for refused in (
        typed,
        with_parameter,
        with_request_parameter,
        two_inputs,
        call("iris", x, "FP64", shape=[3, 4]),
        call(
            "iris",
            x,
            "FP64",
            outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="predict")],
        ),
        call("iris", x, "FP64", raw=b"ab\x00\x00\x00\x00\x00\x00"),
    ):
        assert not takes(refused)
    bytes_input = call("iris", x, "FP64")
    bytes_input.inputs[0].datatype = "BYTES"
    assert not takes(bytes_input)


@pytest.mark.parametrize(
    "settings",
    [
        {"parameters": {"extra": {"predict_fn": "predict_proba"}}},
        {"parameters": {"content_type": "pd"}},
        {
            "inputs": [
                MetadataTensor(
                    name="x",
                    datatype="FP64",
                    shape=[-1, 4],
                    parameters=Parameters(content_type="pd"),
                )
            ]
        },
        {"max_batch_size": 16, "max_batch_time": 0.0005},
    ],
    ids=["predict_fn", "request content type", "input content type", "adaptive batching"],
)
async def test_models_whose_settings_change_the_codecs_get_no_lane(
    settings: dict, tmp_path: Path
) -> None:
    joblib.dump(
        LogisticRegression(max_iter=500).fit(*load_iris(return_X_y=True)), tmp_path / "model.joblib"
    )
    parameters = {"uri": str(tmp_path / "model.joblib"), **settings.pop("parameters", {})}
    model = SKLearnModel(
        ModelSettings(
            name="s",
            implementation=SKLearnModel,
            parameters=ModelParameters(**parameters),
            **settings,
        )
    )
    assert await model.load() and predict_directly(model)
    assert not give_lane(model) and not hasattr(model, LANE_ATTR)


async def test_a_plain_model_gets_its_lane(tmp_path: Path) -> None:
    model = await sklearn_loaded(
        LogisticRegression(max_iter=500).fit(*load_iris(return_X_y=True)), tmp_path
    )
    assert predict_directly(model) and give_lane(model)


class Sampled:
    """An observer (as the payload log) that chooses every call and keeps what it logs."""

    def __init__(self) -> None:
        self.logged: list[tuple[InferenceRequest, InferenceResponse]] = []

    def wants(self, model: MLModel) -> bool:
        return True

    def draw(self, model: MLModel) -> bool:
        return True

    def log(self, model: MLModel, request: InferenceRequest, response: InferenceResponse) -> None:
        self.logged.append((request, response))


async def test_a_sampled_call_keeps_its_lane_and_is_logged(tmp_path: Path) -> None:
    joblib.dump(
        LogisticRegression(max_iter=500).fit(*load_iris(return_X_y=True)), tmp_path / "model.joblib"
    )
    models = LoadedModels()
    await models.swap(
        ModelSettings(
            name="iris",
            implementation=SKLearnModel,
            parameters=ModelParameters(uri=str(tmp_path / "model.joblib")),
        ),
        None,
    )
    observer = Sampled()
    plane = DataPlane(Settings(), models, lambda: True, lambda: True, observers=[observer])

    answered = await plane.infer_lane(call("iris", X_IRIS[:3], "FP64"))

    # Answered by the lane (not sent the slow way because the log samples the model),
    # with an id the client can send labels with, and the same call in the log.
    assert answered is not None
    response, _ = answered
    assert response.id
    [(request, logged)] = observer.logged
    assert request.id == logged.id == response.id
    assert np.allclose(request.inputs[0].data.root, X_IRIS[:3].ravel())
    predicted = np.frombuffer(response.raw_output_contents[0], "<i8")
    assert list(logged.outputs[0].data.root) == list(predicted)
    assert await models.remove("iris")
