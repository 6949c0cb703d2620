"""V2 REST's binary tensor data extension, as tritonclient.http sends it by default:
inputs as raw bytes after a JSON header, outputs answered the same way when asked."""

from __future__ import annotations

import json

import joblib
import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
import xgboost as xgb
from sklearn.datasets import load_breast_cancer, load_iris

from tests.support.server import REPO, ServerProcess

HEADER = "Inference-Header-Content-Length"


@pytest.fixture
def client(repo_server: ServerProcess) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(repo_server.http_url)


def binary_input(name: str, x: np.ndarray, datatype: str) -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, list(x.shape), datatype)
    tensor.set_data_from_numpy(x)  # binary_data=True: tritonclient's default
    return tensor


def test_iris_in_binary_is_scikit_learns_answer(client: httpclient.InferenceServerClient) -> None:
    x = load_iris().data[::10].astype(np.float64)
    result = client.infer("iris", [binary_input("input-0", x, "FP64")])
    expected = joblib.load(REPO / "model-settings/iris/model.joblib").predict(x)
    assert result.as_numpy("predict").ravel().tolist() == expected.tolist()
    # No output named: tritonclient asks for every output in binary.
    raw = result.get_response()
    assert raw["outputs"][0]["parameters"]["binary_data_size"] == 8 * len(x)
    assert "data" not in raw["outputs"][0]


def test_xgboost_thousand_rows_in_binary(client: httpclient.InferenceServerClient) -> None:
    x = np.resize(load_breast_cancer().data.astype(np.float32), (1000, 30))
    result = client.infer("breast-cancer", [binary_input("input-0", x, "FP32")])
    booster = xgb.XGBClassifier()
    booster.load_model(REPO / "model-settings/breast-cancer/model.ubj")
    assert result.as_numpy("predict").ravel().tolist() == booster.predict(x).tolist()


def test_requested_outputs_choose_json_or_binary(client: httpclient.InferenceServerClient) -> None:
    x = load_iris().data[:3].astype(np.float64)
    as_json = httpclient.InferRequestedOutput("predict", binary_data=False)
    result = client.infer("iris", [binary_input("input-0", x, "FP64")], outputs=[as_json])
    assert result.get_response()["outputs"][0]["data"] == [0, 0, 0]
    as_binary = httpclient.InferRequestedOutput("predict", binary_data=True)
    result = client.infer("iris", [binary_input("input-0", x, "FP64")], outputs=[as_binary])
    assert "data" not in result.get_response()["outputs"][0]
    assert result.as_numpy("predict").ravel().tolist() == [0, 0, 0]


def test_texts_in_binary(client: httpclient.InferenceServerClient) -> None:
    texts = np.array([b"i love this great movie", b"what a terrible day"], dtype=np.object_)
    result = client.infer("sentiment", [binary_input("array_inputs", texts, "BYTES")])
    answers = [json.loads(v) for v in result.as_numpy("output").ravel()]
    assert [a["label"] for a in answers] == ["POSITIVE", "NEGATIVE"]


def post(server: ServerProcess, header: dict, binary: bytes, length: str | None = None):
    body = json.dumps(header).encode()
    headers = {HEADER: length if length is not None else str(len(body))}
    return requests.post(
        f"{server.base}/v2/models/iris/infer", data=body + binary, headers=headers, timeout=10
    )


@pytest.mark.parametrize(
    ("size", "extra", "length", "fragment"),
    [
        (32, b"", None, "binary_data_size 32 runs past the 24 bytes"),
        (24, b"\x00" * 8, None, "8 bytes after the JSON header belong to no input"),
        (32, b"", "lots", "Inference-Header-Content-Length 'lots' is not a number"),
        (32, b"", "99999", "is not within the body"),
        (-1, b"", None, "binary_data_size -1 is not a byte count"),
    ],
    ids=["past-the-end", "extra-bytes", "bad-length", "length-past-body", "negative-size"],
)
def test_binary_that_does_not_fit_is_a_bad_request(
    repo_server: ServerProcess, size: int, extra: bytes, length: str | None, fragment: str
) -> None:
    header = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 4],
                          "parameters": {"binary_data_size": size}}]}  # fmt: skip
    r = post(repo_server, header, np.zeros(3, "<f8").tobytes() + extra, length)
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"], r.json()
    # The server goes on answering.
    good = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 4],
                        "parameters": {"binary_data_size": 32}}]}  # fmt: skip
    r = post(repo_server, good, np.array([5.1, 3.5, 1.4, 0.2], "<f8").tobytes())
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == [0]


def test_raw_bytes_that_do_not_fit_the_shape_name_the_input(repo_server: ServerProcess) -> None:
    header = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [2, 4],
                          "parameters": {"binary_data_size": 32}}]}  # fmt: skip
    r = post(repo_server, header, np.zeros(4, "<f8").tobytes())
    assert r.status_code == 400, r.text
    assert "input 'input-0': 32 raw bytes do not fit its shape [2, 4] of FP64" in r.json()["error"]
