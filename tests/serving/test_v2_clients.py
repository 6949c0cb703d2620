"""Clients we did not write, unmodified, against a real `modelyard serve` of the three
example models: the KServe SDK (REST with numpy data, which it sends as binary tensors,
and gRPC, health included) and tritonclient's three ways for the text classifier, each
answer compared with the model's own prediction. (tritonclient on iris and XGBoost:
test_repo_models.py in JSON and gRPC, test_binary.py in binary.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache
from typing import Any

import joblib
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import xgboost as xgb
from sklearn.datasets import load_breast_cancer, load_iris

from tests.support.clients import ids, texts
from tests.support.kserve_sdk import run_kserve_client
from tests.support.server import REPO, ServerProcess

SENTENCES = ["i love this great movie", "what a terrible day", "the service was fine"]


@cache
def pipeline_answers() -> list[dict[str, Any]]:
    """The text classifier's own answers: transformers' pipeline on the same folder."""
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(REPO / "model-settings/sentiment"))
    return list(classify(SENTENCES))


def assert_pipelines_answers(served: list[str]) -> None:
    answers = [json.loads(s) for s in served]
    expected = pipeline_answers()
    assert [a["label"] for a in answers] == [e["label"] for e in expected]
    np.testing.assert_allclose(
        [a["score"] for a in answers], [e["score"] for e in expected], rtol=1e-5
    )


@pytest.fixture(scope="module")
def kserve_answers(repo_server: ServerProcess) -> Iterator[dict[str, Any]]:
    iris = load_iris().data
    cancer = load_breast_cancer().data.astype(np.float32)
    requests = [
        {"model": "iris", "inputs": [
            {"name": "input-0", "datatype": "FP64", "shape": list(iris.shape),
             "data": iris.ravel().tolist()}]},
        {"model": "breast-cancer", "inputs": [
            {"name": "input-0", "datatype": "FP32", "shape": list(cancer.shape),
             "data": cancer.ravel().tolist()}]},
        {"model": "sentiment", "inputs": [
            {"name": "array_inputs", "datatype": "BYTES", "shape": [len(SENTENCES)],
             "data": SENTENCES}]},
    ]  # fmt: skip
    yield run_kserve_client(repo_server.base, repo_server.grpc_url, requests)


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_kserve_sdk_health(protocol: str, kserve_answers: dict[str, Any]) -> None:
    assert kserve_answers[protocol]["live"] is True
    assert kserve_answers[protocol]["ready"] is True


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_kserve_sdk_gets_each_models_own_answers(
    protocol: str, kserve_answers: dict[str, Any]
) -> None:
    iris, cancer, sentiment = kserve_answers[protocol]["answers"]
    estimator = joblib.load(REPO / "model-settings/iris/model.joblib")
    (predict,) = iris
    assert predict["name"] == "predict"
    assert predict["data"] == estimator.predict(load_iris().data).tolist()

    booster = xgb.XGBClassifier()
    booster.load_model(REPO / "model-settings/breast-cancer/model.ubj")
    x = load_breast_cancer().data.astype(np.float32)
    (predict,) = cancer
    assert predict["data"] == booster.predict(x).tolist()

    (output,) = sentiment
    assert output["name"] == "output" and output["datatype"] == "BYTES"
    assert_pipelines_answers(output["data"])


@pytest.mark.parametrize("way", ["http-binary", "http-json", "grpc"])
def test_tritonclient_text_classifier_is_the_pipelines_own(
    way: str, repo_server: ServerProcess
) -> None:
    array, datatype = ids(*SENTENCES)
    if way == "grpc":
        client: Any = grpcclient.InferenceServerClient(repo_server.grpc_url)
        infer_input = grpcclient.InferInput("array_inputs", [len(SENTENCES)], datatype)
        infer_input.set_data_from_numpy(array)
        result = client.infer("sentiment", [infer_input])
    else:
        binary = way == "http-binary"
        client = httpclient.InferenceServerClient(repo_server.http_url)
        infer_input = httpclient.InferInput("array_inputs", [len(SENTENCES)], datatype)
        infer_input.set_data_from_numpy(array, binary_data=binary)
        output = httpclient.InferRequestedOutput("output", binary_data=binary)
        result = client.infer("sentiment", [infer_input], outputs=[output])
    assert_pipelines_answers(texts(result, "output"))
