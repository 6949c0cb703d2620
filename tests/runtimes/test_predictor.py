"""The predictor runtime called directly: load(), predict(), as MLServer calls it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlserver.errors import InferenceError, MLServerError
from modelyard_runtimes.predictor import PredictorPipeline

from modelyard.declarations.folders import load_model_folder
from modelyard.declarations.integrity import IntegrityError, verify_settings
from modelyard.errors import ModelCodeFailed
from tests.runtimes import folders
from tests.runtimes.conftest import output, v2_request


async def test_predict_without_pre_or_postprocess(tmp_path: Path, load_runtime) -> None:
    model = await load_runtime(folders.doubler(tmp_path / "doubler"))
    x = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.5]]
    response = await model.predict(
        v2_request({"name": "x", "datatype": "FP64", "shape": [2, 3], "data": x})
    )
    (out,) = response.outputs
    assert (out.name, out.datatype, out.shape) == ("predict", "FP64", [2, 3])
    assert out.data.root == [2.0, 4.0, 6.0, 8.0, 10.0, 13.0]
    assert (response.model_name, response.model_version) == ("doubler", "1")


async def test_constructor_takes_the_declared_parameters(tmp_path: Path, load_runtime) -> None:
    folder = folders.doubler(
        tmp_path / "tripler",
        extra={"parameters": {"factor": 3}},
        outputs=[{"name": "tripled", "datatype": "INT64", "shape": [-1]}],
    )
    model = await load_runtime(folder)
    response = await model.predict(
        v2_request({"name": "x", "datatype": "INT32", "shape": [3], "data": [1, 2, 3]})
    )
    # Named after the first declared output, in its datatype and rank.
    (out,) = response.outputs
    assert (out.name, out.datatype, out.shape, out.data.root) == (
        "tripled",
        "INT64",
        [3],
        [3, 6, 9],
    )


async def test_preprocess_predict_postprocess_on_strings(tmp_path: Path, load_runtime) -> None:
    model = await load_runtime(folders.words(tmp_path / "words"))
    texts = ["  hi ", "hello world", "abcdef"]
    response = await model.predict(
        v2_request({"name": "text", "datatype": "BYTES", "shape": [3], "data": texts})
    )
    assert [o.name for o in response.outputs] == ["length", "size"]
    length = response.outputs[0]
    assert (length.datatype, length.shape) == ("INT32", [3, 1])
    assert output(response, "length") == [2, 11, 6]
    assert output(response, "size") == ["short", "long", "long"]


async def test_requested_outputs_only(tmp_path: Path, load_runtime) -> None:
    model = await load_runtime(folders.words(tmp_path / "words"))
    text = {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["abc"]}
    response = await model.predict(v2_request(text, outputs=["size"]))
    assert [o.name for o in response.outputs] == ["size"]
    with pytest.raises(InferenceError, match=r"no output 'colour'; it returns 'length', 'size'"):
        await model.predict(v2_request(text, outputs=["colour"]))


async def test_several_inputs_or_pd_content_type_give_a_dataframe(
    tmp_path: Path, load_runtime
) -> None:
    model = await load_runtime(folders.table(tmp_path / "table"))
    price = {"name": "price", "datatype": "FP32", "shape": [2], "data": [2.5, 10.0]}
    quantity = {"name": "quantity", "datatype": "INT64", "shape": [2], "data": [4, 3]}
    response = await model.predict(v2_request(price, quantity))
    assert output(response, "predict") == [10.0, 30.0]

    single = await load_runtime(
        folders.predictor_folder(
            tmp_path / "columns", "columns",
            "class Columns:\n    def predict(self, frame):\n        return list(frame.columns)\n",
            "Columns",
        )
    )  # fmt: skip
    response = await single.predict(v2_request(price, content_type="pd"))
    assert output(response, "predict") == ["price"]


async def test_user_errors_are_400_or_500_with_the_users_message(
    tmp_path: Path, load_runtime
) -> None:
    model = await load_runtime(folders.faulty(tmp_path / "faulty"))

    def words(*values: str):
        return v2_request(
            {"name": "word", "datatype": "BYTES", "shape": [len(values)], "data": list(values)}
        )

    with pytest.raises(InferenceError) as bad:
        await model.predict(words("fine", "bad"))
    assert bad.value.status_code == 400
    assert str(bad.value) == (
        "model 'faulty': 'bad' is not a word this model knows; send another word"
    )
    # Not an MLServerError: the server answers it as any unexpected error (a 500 naming
    # the request id), with the step and the exception in its log.
    with pytest.raises(ModelCodeFailed) as crash:
        await model.predict(words("crash"))
    assert not isinstance(crash.value, MLServerError)
    assert str(crash.value) == (
        "model 'faulty': Faulty.predict raised ZeroDivisionError: division by zero"
    )
    assert isinstance(crash.value.__cause__, ZeroDivisionError)
    # A ValueError is the model's fault unless it says otherwise (BadRequest).
    with pytest.raises(ModelCodeFailed, match=r"Faulty\.predict raised ValueError: could not"):
        await model.predict(words("typo"))
    # The model still answers afterwards.
    assert output(await model.predict(words("four")), "predict") == [4]


async def test_sha256_mismatch_refuses_before_unpickling(tmp_path: Path, load_runtime) -> None:
    folder = tmp_path / "trapped"
    marker = tmp_path / "pickle-was-loaded"
    artifact = folders.booby_trapped(folder, marker)
    declared = "ab" * 32
    folders.predictor_folder(
        folder, "trapped",
        "import joblib\n\nclass Loader:\n"
        "    def load(self, d):\n        joblib.load(d + '/model.joblib')\n"
        "    def predict(self, x):\n        return x\n",
        "Loader",
        uri="./model.joblib",
        extra={"modelyard": {"sha256": declared}},
    )  # fmt: skip
    with pytest.raises(IntegrityError) as refused:
        await load_runtime(folder)
    assert str(refused.value) == (
        f"model 'trapped': sha256 mismatch for model.joblib (expected {declared}, "
        f"got {folders.sha256(artifact)}); refusing to load"
    )
    assert not marker.exists()

    # The right hash lets it load, which shows the trap is real.
    settings = json.loads((folder / "model-settings.json").read_text())
    settings["parameters"]["extra"]["modelyard"]["sha256"] = folders.sha256(artifact)
    (folder / "model-settings.json").write_text(json.dumps(settings))
    await load_runtime(folder)
    assert marker.exists()


async def test_version_mismatch_refuses_to_load(tmp_path: Path, load_runtime) -> None:
    folder = folders.doubler(
        tmp_path / "old",
        extra={"modelyard": {"versions": {"scikit-learn": "0.20.0", "numpy": np.__version__}}},
    )
    with pytest.raises(IntegrityError) as refused:
        await load_runtime(folder)
    message = str(refused.value)
    assert "model 'doubler': library versions differ from the declaration" in message
    assert "scikit-learn: trained with 0.20.0, installed 1.9.1" in message
    assert "numpy" not in message.split("(")[1]


def test_verify_settings_for_any_runtime(tmp_path: Path) -> None:
    """The registry's check, on a plain scikit-learn model."""
    folder = tmp_path / "iris"
    artifact = folders.iris_classifier(tmp_path / "iris.joblib")
    folder.mkdir()
    (folder / "model.joblib").write_bytes(artifact.read_bytes())
    good = folders.sha256(artifact)
    folders.write_settings(
        folder, "iris", {"modelyard": {"sha256": good, "versions": {"scikit-learn": "1.9.1"}}},
        uri="./model.joblib", implementation="mlserver_sklearn.SKLearnModel",
    )  # fmt: skip
    verify_settings(load_model_folder(folder))
    with (folder / "model.joblib").open("ab") as f:
        f.write(b"tampered")
    with pytest.raises(IntegrityError, match=f"expected {good}, got "):
        verify_settings(load_model_folder(folder))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"predictor": "predictor.py:Nope"},
            "'predictor.py:Nope': predictor.py has no class Nope",
        ),
        (
            {"predictor": "predictor.py:Doubler", "featurs": {}},
            "model 'broken': parameters.extra.featurs: Extra inputs are not permitted",
        ),
        (
            {"predictor": "predictor.py:Doubler", "parameters": {"colour": "red"}},
            "loading predictor.py:Doubler failed: TypeError: Doubler.__init__() got an "
            "unexpected keyword argument 'colour'",
        ),
    ],
)
async def test_load_errors_name_the_problem(
    tmp_path: Path, load_runtime, extra: dict, message: str
) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "predictor.py").write_text(folders.DOUBLER)
    folders.write_settings(folder, "broken", extra)
    with pytest.raises(Exception) as failed:
        await load_runtime(folder)
    assert message in str(failed.value)


async def test_decode_error_is_a_400(tmp_path: Path, load_runtime) -> None:
    model = await load_runtime(folders.doubler(tmp_path / "doubler"))
    with pytest.raises(MLServerError) as bad:
        await model.predict(
            v2_request({"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1.0, 2.0, 3.0]})
        )
    assert bad.value.status_code == 400


def test_pipeline_runs_without_a_server(tmp_path: Path) -> None:
    pipeline = PredictorPipeline.from_settings(load_model_folder(folders.words(tmp_path / "words")))
    pipeline.load()
    assert pipeline.run(["abc", "abcdefgh"])["size"] == ["short", "long"]
