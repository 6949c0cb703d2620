"""Tests of the {{ cookiecutter.name }} service over its V2 REST paths. Run `pytest` in this folder."""

import pytest
from fastapi.testclient import TestClient

from app import DECLARATION, app

NAME = DECLARATION["name"]
ROWS = [[1.0, 0.0, 2.0, 0.5], [0.0, 3.0, 0.0, 1.0]]


@pytest.fixture
def client():
    with TestClient(app) as c:  # runs the lifespan: the model is loaded
        yield c


def infer(client, body: dict, path: str = f"/v2/models/{NAME}/infer"):
    return client.post(path, json=body)


def request(rows: list, datatype: str = "FP64") -> dict:
    shape = [len(rows), len(rows[0])]
    return {"inputs": [{"name": "input-0", "datatype": datatype, "shape": shape, "data": rows}]}


def test_health() -> None:
    with TestClient(app) as client:
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/health/ready").status_code == 200
        assert client.get(f"/v2/models/{NAME}/ready").status_code == 200


def test_metadata_is_the_declared_signature(client) -> None:
    meta = client.get(f"/v2/models/{NAME}").json()
    assert meta["name"] == NAME
    assert [i["name"] for i in meta["inputs"]] == [i["name"] for i in DECLARATION["inputs"]]
    assert [o["name"] for o in meta["outputs"]] == [o["name"] for o in DECLARATION["outputs"]]


def test_infer_answers_label_and_score(client) -> None:
    r = infer(client, request(ROWS))
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    assert outputs["label"]["data"] == [1, 0]
    assert outputs["score"]["data"] == pytest.approx([1.5, -2.25])
    assert outputs["label"]["shape"] == [2, 1]


def test_the_declared_example_is_answered(client) -> None:
    assert infer(client, DECLARATION["example"]).status_code == 200


def test_errors_name_the_problem(client) -> None:
    wrong_width = infer(client, request([[1.0, 2.0]]))
    assert wrong_width.status_code == 400
    assert "input-0" in wrong_width.json()["error"]
    assert infer(client, {"inputs": "nope"}).status_code == 400
    unknown = infer(client, request(ROWS), path="/v2/models/no-such-model/infer")
    assert unknown.status_code == 404
    assert "no-such-model" in unknown.json()["error"]
