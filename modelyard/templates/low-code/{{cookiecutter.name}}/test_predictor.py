"""Tests of {{ cookiecutter.name }}'s predictor on its own, called the way the predictor runtime
calls it. Run `pytest` in this folder."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from predictor import {{ cookiecutter.class_name }}

HERE = Path(__file__).resolve().parent
DECLARATION = yaml.safe_load((HERE / "model.yaml").read_text())


@pytest.fixture
def predictor() -> {{ cookiecutter.class_name }}:
    p = {{ cookiecutter.class_name }}()
    p.load(str(HERE))
    return p


def run(predictor: {{ cookiecutter.class_name }}, inputs: np.ndarray) -> dict[str, np.ndarray]:
    return predictor.postprocess(predictor.predict(predictor.preprocess(inputs)))


def test_example_answers_every_declared_output(predictor) -> None:
    example = DECLARATION["example"]["inputs"][0]
    inputs = np.asarray(example["data"], dtype=np.float64).reshape(example["shape"])
    outputs = run(predictor, inputs)
    for declared in DECLARATION["outputs"]:
        values = np.asarray(outputs[declared["name"]])
        assert values.shape == (len(inputs), 1), declared["name"]
        assert values.dtype == {"INT64": np.int64, "FP64": np.float64}[declared["datatype"]]


def test_label_is_one_when_the_score_is_positive(predictor) -> None:
    outputs = run(predictor, np.array([[1.0, 0.0, 2.0, 0.5], [0.0, 3.0, 0.0, 1.0]]))
    np.testing.assert_allclose(outputs["score"].ravel(), [1.5, -2.25])
    assert outputs["label"].ravel().tolist() == [1, 0]
