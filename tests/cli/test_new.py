"""`modelyard new` for every runtime and template: each folder validates, serves over V2
(no-code once an artifact is dropped in) and passes its own tests."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import joblib
import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
import xgboost as xgb
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from tests.support.clients import infer, make_client
from tests.support.declarations import run_cli, run_pytest
from tests.support.server import REPO, free_port

# folder name -> (runtime, template)
SCAFFOLDS = {
    "iris-sk": ("sklearn", "no-code"),
    "iris-xgb": ("xgboost", "no-code"),
    "mood": ("huggingface", "no-code"),
    "churn-score": ("predictor", "low-code"),
    "fraud-service": ("custom", "full-custom"),
}
NO_CODE_ARTIFACT = {"iris-sk": "model.joblib", "iris-xgb": "model.ubj", "mood": "config.json"}
ROWS = [[1.0, 0.0, 2.0, 0.5], [0.0, 3.0, 0.0, 1.0]]
IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]


def add_artifacts(models: Path) -> np.ndarray:
    """What a data scientist drops into the no-code folders; returns the xgboost
    model's own predictions on IRIS_ROWS."""
    x, y = load_iris(return_X_y=True)
    joblib.dump(LogisticRegression(max_iter=1000).fit(x, y), models / "iris-sk" / "model.joblib")
    booster = xgb.XGBClassifier(n_estimators=5, max_depth=2, n_jobs=1).fit(x, y)
    booster.save_model(models / "iris-xgb" / "model.ubj")
    for f in (REPO / "model-settings" / "sentiment").iterdir():
        if f.name != "model-settings.json":
            shutil.copy(f, models / "mood" / f.name)
    return booster.predict(np.array(IRIS_ROWS, dtype=np.float32))


@pytest.fixture(scope="module")
def scaffolded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    models = tmp_path_factory.mktemp("new") / "models"
    created = {}
    for name, (runtime, template) in SCAFFOLDS.items():
        result = run_cli(
            "new", name, "--runtime", runtime, "--template", template, "--dir", str(models)
        )
        assert result.returncode == 0, result.stdout + result.stderr
        created[name] = result.stdout
    before = run_cli("validate", str(models))
    xgb_predictions = add_artifacts(models)
    after = run_cli("validate", str(models))
    # The folders' own tests run meanwhile; test_every_scaffold_passes_its_own_tests
    # collects them.
    own_tests = {name: run_pytest(models / name) for name in SCAFFOLDS}
    yield {
        "models": models,
        "created": created,
        "before": before,
        "after": after,
        "xgb_predictions": xgb_predictions,
        "own_tests": own_tests,
    }
    for proc in own_tests.values():
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_new_lists_what_it_made(scaffolded: dict) -> None:
    models = scaffolded["models"]
    out = scaffolded["created"]["churn-score"].splitlines()
    assert out[0] == f"created {models / 'churn-score'}/"
    assert sorted(line.strip() for line in out[1:-1]) == [
        "README.md", "model.yaml", "predictor.py", "reference.py", "test_predictor.py",
        "weights.json",
    ]  # fmt: skip
    files = {p.name for p in (models / "fraud-service").iterdir()}
    assert {"app.py", "fraud_service.py", "test_app.py", "Dockerfile", "README.md"} <= files


def test_no_code_folders_ask_for_their_artifact(scaffolded: dict) -> None:
    before, models = scaffolded["before"], scaffolded["models"]
    assert before.returncode == 2
    problems = [line for line in before.stdout.splitlines() if ": /" in line]
    assert problems == [
        f"{models / 'iris-sk' / 'model.yaml'}: /model/uri: model.joblib does not exist in "
        f"{models / 'iris-sk'}; add the artifact there or fix the path",
        f"{models / 'iris-xgb' / 'model.yaml'}: /model/uri: model.ubj does not exist in "
        f"{models / 'iris-xgb'}; add the artifact there or fix the path",
        f"{models / 'mood' / 'model.yaml'}: /model/uri: ./ has no config.json; save the model "
        "there with save_pretrained() or name a hub model in model.parameters.pretrained_model",
    ]


def test_every_scaffold_validates(scaffolded: dict) -> None:
    after = scaffolded["after"]
    assert after.returncode == 0, after.stdout
    assert after.stdout.splitlines()[-1] == "5 files checked: all valid"


def test_every_scaffold_serves_over_v2(scaffolded: dict, serve_dir) -> None:
    server = serve_dir(scaffolded["models"], "--no-watch")
    states = {s["name"]: s["state"] for s in server.status()["models"]}
    assert states == dict.fromkeys(SCAFFOLDS, "ready"), server.status()
    rows = np.array(ROWS, dtype=np.float64)
    for client in (make_client("http", server), make_client("grpc", server)):
        iris = infer(client, "iris-sk", {"input-0": (np.array(IRIS_ROWS), "FP64")})
        assert iris.as_numpy("predict").ravel().tolist() == [0, 2]

        iris32 = np.array(IRIS_ROWS, dtype=np.float32)
        boosted = infer(client, "iris-xgb", {"input-0": (iris32, "FP32")})
        assert (
            boosted.as_numpy("predict").ravel().tolist() == scaffolded["xgb_predictions"].tolist()
        )

        text = np.array([b"i love this great movie"], dtype=np.object_)
        (mood,) = infer(client, "mood", {"args": (text, "BYTES")}).as_numpy("output").ravel()
        assert json.loads(mood)["label"] == "POSITIVE"

        for model in ("churn-score", "fraud-service"):
            answer = infer(client, model, {"input-0": (rows, "FP64")})
            assert answer.as_numpy("label").ravel().tolist() == [1, 0]
            np.testing.assert_allclose(answer.as_numpy("score").ravel(), [1.5, -2.25])


@pytest.fixture
def standalone_service(scaffolded: dict) -> Iterator[str]:
    """The full-custom folder's own FastAPI service, as its Dockerfile runs it."""
    folder, port = scaffolded["models"] / "fraud-service", free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", str(port)],
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            try:
                if requests.get(f"http://{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "the service did not get ready in 60s"
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_full_custom_service_speaks_v2_on_its_own(standalone_service: str) -> None:
    client = httpclient.InferenceServerClient(standalone_service)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("fraud-service")
    meta = client.get_model_metadata("fraud-service")
    assert [i["name"] for i in meta["inputs"]] == ["input-0"]
    answer = infer(client, "fraud-service", {"input-0": (np.array(ROWS), "FP64")})
    assert answer.as_numpy("label").ravel().tolist() == [1, 0]
    assert not client.is_model_ready("no-such-model")


def test_every_scaffold_passes_its_own_tests(scaffolded: dict) -> None:
    for name, proc in scaffolded["own_tests"].items():
        output, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, f"{name}:\n{output}"
        assert " passed" in output and "failed" not in output, f"{name}:\n{output}"


@pytest.mark.parametrize(
    ("runtime", "template", "message"),
    [
        ("predictor", "no-code", "--template no-code does not go with --runtime predictor: no-code "
         "takes --runtime sklearn or xgboost or lightgbm or catboost or mlflow or onnx or "
         "huggingface; --runtime predictor goes with --template low-code"),
        ("sklearn", "low-code", "low-code takes --runtime predictor; --runtime sklearn goes with "
         "--template no-code"),
        ("custom", "no-code", "--runtime custom goes with --template full-custom"),
    ],
)  # fmt: skip
def test_bad_combinations_are_refused(
    tmp_path: Path, runtime: str, template: str, message: str
) -> None:
    result = run_cli(
        "new", "m", "--runtime", runtime, "--template", template, "--dir", str(tmp_path)
    )
    assert result.returncode == 2
    assert message in " ".join(result.stderr.split())
    assert not (tmp_path / "m").exists()


def test_bad_name_and_existing_folder_are_refused(tmp_path: Path) -> None:
    args = ["--runtime", "sklearn", "--template", "no-code", "--dir", str(tmp_path)]
    bad = run_cli("new", "Churn_Model", *args)
    assert bad.returncode == 2 and "'Churn_Model' cannot be a model name" in bad.stderr
    assert run_cli("new", "churn", *args).returncode == 0
    again = run_cli("new", "churn", *args)
    assert again.returncode == 2 and "already exists" in again.stderr
