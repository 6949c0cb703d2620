"""The three no-code models of model-settings/, over V2 REST and gRPC with tritonclient."""

from __future__ import annotations

import json

import joblib
import numpy as np
import pytest
import requests
import xgboost as xgb
from sklearn.datasets import load_breast_cancer, load_iris

from tests.support.clients import Client, expect_error, ids, infer, make_client, texts
from tests.support.server import REPO, ServerProcess

IRIS_SETOSA = [[5.1, 3.5, 1.4, 0.2]]
IRIS_VIRGINICA = [[6.7, 3.0, 5.2, 2.3]]


@pytest.fixture(params=["http", "grpc"])
def client(request: pytest.FixtureRequest, repo_server: ServerProcess) -> Client:
    return make_client(request.param, repo_server)


def iris(client: Client, rows: list[list[float]], datatype: str = "FP64", name: str = "input-0"):
    dtype = np.int32 if datatype == "INT32" else np.float64
    return infer(client, "iris", {name: (np.array(rows, dtype=dtype), datatype)})


def test_server_ready_and_lists_models(client: Client) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    for model in ("iris", "breast-cancer", "sentiment"):
        assert client.is_model_ready(model)


def test_iris_metadata(client: Client) -> None:
    meta = client.get_model_metadata("iris")
    if not isinstance(meta, dict):
        from google.protobuf.json_format import MessageToDict

        meta = MessageToDict(meta, preserving_proto_field_name=True)
    assert meta["name"] == "iris"
    assert meta["versions"] == ["1"]
    assert meta["inputs"][0]["name"] == "input-0"
    assert meta["inputs"][0]["datatype"] == "FP64"
    assert [int(d) for d in meta["inputs"][0]["shape"]] == [-1, 4]


def test_iris_predicts_classes(client: Client) -> None:
    result = iris(client, IRIS_SETOSA + IRIS_VIRGINICA)
    assert result.as_numpy("predict").ravel().tolist() == [0, 2]


def test_breast_cancer_xgboost_matches_labels(client: Client) -> None:
    x, y = load_breast_cancer(return_X_y=True)
    rows = np.array(x[:20], dtype=np.float32)
    result = infer(client, "breast-cancer", {"input-0": (rows, "FP32")})
    predicted = result.as_numpy("predict").ravel()
    # A fitted booster reproduces its training labels on these rows.
    assert (predicted == y[:20]).mean() >= 0.95
    proba = infer(
        client, "breast-cancer", {"input-0": (rows[:2], "FP32")}, outputs=["predict_proba"]
    ).as_numpy("predict_proba")
    assert proba.shape == (2, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)


def test_breast_cancer_answers_are_xgboost_own(client: Client, repo_server: ServerProcess) -> None:
    # The server makes the booster's C call directly; every answer is still exactly
    # what XGBoost's scikit-learn wrapper gives, one row at a time and all at once.
    assert "'breast-cancer': predicting directly (XGBClassifier)" in repo_server.log()
    estimator = xgb.XGBClassifier()
    estimator.load_model(REPO / "model-settings/breast-cancer/model.ubj")
    x = load_breast_cancer().data.astype(np.float32)
    served = infer(
        client, "breast-cancer", {"input-0": (x, "FP32")}, outputs=["predict", "predict_proba"]
    )
    np.testing.assert_array_equal(served.as_numpy("predict").ravel(), estimator.predict(x))
    np.testing.assert_array_equal(served.as_numpy("predict_proba"), estimator.predict_proba(x))
    one = infer(client, "breast-cancer", {"input-0": (x[7:8], "FP32")}).as_numpy("predict")
    assert one.ravel().tolist() == estimator.predict(x[7:8]).tolist()


def test_iris_answers_are_scikit_learns_own(client: Client, repo_server: ServerProcess) -> None:
    # The server makes the logistic regression's product itself; every answer is still
    # exactly scikit-learn's.
    assert "'iris': predicting directly (LogisticRegression)" in repo_server.log()
    estimator = joblib.load(REPO / "model-settings/iris/model.joblib")
    x = load_iris().data
    served = infer(client, "iris", {"input-0": (x, "FP64")}).as_numpy("predict")
    np.testing.assert_array_equal(served.ravel(), estimator.predict(x))
    for row in x[::7]:
        one = iris(client, [row.tolist()]).as_numpy("predict")
        assert one.ravel().tolist() == estimator.predict(row[None]).tolist()


def test_iris_nan_is_a_400_naming_the_input(repo_server: ServerProcess) -> None:
    # gRPC only: JSON has no NaN. scikit-learn refuses it: the client's input, not a 500.
    client = make_client("grpc", repo_server)
    nan = [[5.1, float("nan"), 1.4, 0.2]]
    expect_error(
        client, lambda: iris(client, nan), 400, "INVALID_ARGUMENT",
        "model 'iris': input 'input-0' carries NaN or an infinite value",
    )  # fmt: skip
    assert_still_serving(client)


def sentiment(client: Client, name: str, *sentences: str) -> list[dict]:
    result = infer(client, "sentiment", {name: ids(*sentences)})
    return [json.loads(v) for v in texts(result, "output")]


def test_sentiment_labels_text(client: Client) -> None:
    # One text as the pipeline's positional argument, several as one batch.
    (single,) = sentiment(client, "args", "i love this great movie")
    batch = sentiment(client, "array_inputs", "i love this great movie", "what a terrible day")
    assert single["label"] == "POSITIVE"
    assert [a["label"] for a in batch] == ["POSITIVE", "NEGATIVE"]
    for a in [single, *batch]:
        assert 0.5 < a["score"] <= 1.0


# -- errors: each is precise, and the server answers good requests afterwards -------


def assert_still_serving(client: Client) -> None:
    assert iris(client, IRIS_SETOSA).as_numpy("predict").ravel().tolist() == [0]


def test_unknown_model_is_not_found(client: Client) -> None:
    x = np.array(IRIS_SETOSA, dtype=np.float64)
    expect_error(
        client, lambda: infer(client, "no-such-model", {"input-0": (x, "FP64")}),
        404, "NOT_FOUND", "no-such-model",
    )  # fmt: skip
    assert_still_serving(client)


def test_readiness_of_an_unknown_model_is_not_found(repo_server: ServerProcess) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(repo_server.grpc_url)
    with pytest.raises(InferenceServerException) as info:
        client.is_model_ready("no-such-model")
    assert info.value.status() == "StatusCode.NOT_FOUND"
    assert "no-such-model" in info.value.message()
    r = requests.get(f"{repo_server.base}/v2/models/no-such-model/ready", timeout=5)
    assert r.status_code == 404


def test_wrong_datatype_is_invalid_argument(client: Client) -> None:
    expect_error(
        client, lambda: iris(client, IRIS_SETOSA, datatype="INT32"),
        400, "INVALID_ARGUMENT", "input-0", "INT32", "FP64",
    )  # fmt: skip
    assert_still_serving(client)


def test_wrong_shape_is_invalid_argument(client: Client) -> None:
    expect_error(
        client, lambda: iris(client, [[5.1, 3.5, 1.4]]),
        400, "INVALID_ARGUMENT", "input-0", "[1, 3]", "[-1, 4]",
    )  # fmt: skip
    assert_still_serving(client)


def test_unknown_input_name_is_invalid_argument(client: Client) -> None:
    expect_error(
        client, lambda: iris(client, IRIS_SETOSA, name="features"),
        400, "INVALID_ARGUMENT", "'features'", "'input-0'",
    )  # fmt: skip
    assert_still_serving(client)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b'{"inputs": [', "JSON"),
        (b'{"inputs": "nope"}', "inputs"),
        (
            b'{"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 4],'
            b' "data": [1, 2, 3]}]}',
            "3 values",
        ),
    ],
    ids=["truncated-json", "inputs-not-a-list", "data-does-not-fill-shape"],
)
def test_malformed_rest_body_is_bad_request(
    repo_server: ServerProcess, body: bytes, fragment: str
) -> None:
    r = requests.post(
        f"{repo_server.base}/v2/models/iris/infer",
        data=body,
        headers={"Content-Type": "application/json"},
        timeout=5,
    )
    assert r.status_code in (400, 422), r.text
    assert fragment.lower() in r.text.lower(), r.text
    assert_still_serving(make_client("http", repo_server))


def model_metric(text: str, name: str, model: str) -> float:
    """``name`` for ``model``, summed over versions and processes."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and f'model="{model}"' in line
    )


def test_metrics_count_answered_and_failed_requests(
    repo_server: ServerProcess, client: Client
) -> None:
    """MLServer's per-model request metrics (what the alert rules read) count each
    request once: answered, or failed (here, refused by the declared signature)."""
    url = f"http://127.0.0.1:{repo_server.metrics_port}/metrics"
    names = ("model_infer_request_success_total", "model_infer_request_failure_total",
             "model_infer_request_duration_count", "modelyard_requests_in_flight")  # fmt: skip
    before = requests.get(url, timeout=5).text
    for _ in range(3):
        assert_still_serving(client)
    for _ in range(2):
        expect_error(client, lambda: iris(client, [[5.1, 3.5, 1.4]]), 400, "INVALID_ARGUMENT",
                     "input-0")  # fmt: skip
    after = requests.get(url, timeout=5).text
    deltas = [model_metric(after, n, "iris") - model_metric(before, n, "iris") for n in names]
    assert deltas == [3, 2, 5, 0]


def grpc_handled(text: str, method: str, code: str) -> float:
    """grpc_server_handled_total of ``method`` with ``code``, summed over processes."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("grpc_server_handled_total{") and (
            f'grpc_method="{method}"' in line and f'grpc_code="{code}"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_grpc_calls_are_measured_by_method_and_code(repo_server: ServerProcess) -> None:
    """ModelInfer (answered by modelyard's own servicer) and the other methods (through
    MLServer's interceptor) land in the same gRPC metrics the dashboards read."""
    url = f"http://127.0.0.1:{repo_server.metrics_port}/metrics"
    before = requests.get(url, timeout=5).text
    client = make_client("grpc", repo_server)
    assert_still_serving(client)
    x = np.array(IRIS_SETOSA, dtype=np.float64)
    expect_error(
        client, lambda: infer(client, "no-such-model", {"input-0": (x, "FP64")}),
        404, "NOT_FOUND", "no-such-model",
    )  # fmt: skip
    assert client.is_server_ready()
    after = requests.get(url, timeout=5).text
    for method, code in (("ModelInfer", "OK"), ("ModelInfer", "NOT_FOUND"), ("ServerReady", "OK")):
        assert grpc_handled(after, method, code) >= grpc_handled(before, method, code) + 1, (
            method,
            code,
        )
    timed = [
        float(line.rsplit(" ", 1)[1])
        for line in after.splitlines()
        if line.startswith("grpc_server_handling_seconds_count{") and "ModelInfer" in line
    ]
    assert sum(timed) >= 2, timed


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ([np.zeros(4, "<f8").tobytes()[:-3]], "29 raw bytes do not fit its shape [1, 4] of FP64"),
        ([np.zeros(3, "<f8").tobytes()], "24 raw bytes do not fit its shape [1, 4] of FP64"),
        ([], "input 'input-0': carries 0 values"),
    ],
    ids=["partial-value", "too-few-values", "no-contents"],
)
def test_bad_raw_grpc_contents_are_invalid_argument(
    repo_server: ServerProcess, raw: list[bytes], fragment: str
) -> None:
    """Raw tensor bytes (read as numpy arrays over the bytes) that do not fill the
    declared shape are the client's error, named, and the server goes on serving."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    request = service_pb2.ModelInferRequest(model_name="iris", raw_input_contents=raw)
    request.inputs.add(name="input-0", datatype="FP64", shape=[1, 4])
    with grpc.insecure_channel(repo_server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value
        assert fragment in info.value.details(), info.value.details()
        request.raw_input_contents[:] = [np.array([[5.1, 3.5, 1.4, 0.2]], "<f8").tobytes()]
        answer = stub.ModelInfer(request, timeout=10)
        assert np.frombuffer(answer.raw_output_contents[0], "<i8").tolist() == [0]


def test_grpc_typed_contents_and_requested_outputs(repo_server: ServerProcess) -> None:
    """Inputs sent in the typed contents fields (as MLServer's own client and most
    hand-written clients send them, rather than raw bytes) are read as they were sent,
    with the outputs and parameters the request names."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    request = service_pb2.ModelInferRequest(model_name="iris", id="typed-1")
    tensor = request.inputs.add(name="input-0", datatype="FP64", shape=[2, 4])
    tensor.contents.fp64_contents.extend([*IRIS_SETOSA[0], *IRIS_VIRGINICA[0]])
    request.outputs.add(name="predict_proba")
    with grpc.insecure_channel(repo_server.grpc_url) as channel:
        answer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    assert answer.id == "typed-1"
    [output] = answer.outputs
    assert (output.name, list(output.shape)) == ("predict_proba", [2, 3])
    proba = np.array(output.contents.fp64_contents).reshape(2, 3)
    assert proba.argmax(axis=1).tolist() == [0, 2]
