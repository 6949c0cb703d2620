"""The predictor runtime through a real `modelyard serve`, over REST and gRPC.

One server holds every folder: the good ones answer, the refused ones (tampered
artifact, wrong library version) show their error in the status while the others
keep answering.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.conftest import print_log_on_failure
from tests.runtimes import folders
from tests.support.clients import expect_error, ids, infer, make_client, texts
from tests.support.postgres import PostgresServer
from tests.support.server import ServerProcess, running

WRONG_SKLEARN = "0.20.0"


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer
) -> Iterator[tuple[ServerProcess, Path]]:
    root = tmp_path_factory.mktemp("predictor-server")
    models = root / "models"
    folders.doubler(
        models / "doubler", inputs=[{"name": "x", "datatype": "FP64", "shape": [-1, 3]}]
    )
    folders.words(models / "words")
    folders.faulty(models / "faulty")
    folders.fill_profiles(f"sqlite:///{models}/scorer-sqlite/features.db")
    folders.scorer(models / "scorer-sqlite", "sqlite:///features.db", name="scorer-sqlite")
    folders.slow_scorer(models / "slow-scorer")
    folders.fill_profiles(postgres.create_database("features_served"))
    # The URL comes from the server's environment, as a secret would.
    folders.scorer(models / "scorer-pg", "${PROFILE_PG_URL}", name="scorer-pg")

    # scikit-learn models: one pinned by its hash, one whose file is not what was pinned.
    good = folders.iris_classifier(root / "iris.joblib")
    pinned = {"sha256": folders.sha256(good), "versions": {"scikit-learn": "1.9.1"}}
    for name in ("iris-pinned", "iris-tampered"):
        (models / name).mkdir()
        folders.write_settings(
            models / name, name, {"modelyard": pinned},
            uri="./model.joblib", implementation="mlserver_sklearn.SKLearnModel",
        )  # fmt: skip
    (models / "iris-pinned" / "model.joblib").write_bytes(good.read_bytes())
    folders.booby_trapped(models / "iris-tampered", root / "pickle-was-loaded")
    folders.doubler(
        models / "old-sklearn",
        name="old-sklearn",
        extra={"modelyard": {"versions": {"scikit-learn": WRONG_SKLEARN}}},
    )

    server = ServerProcess(
        models,
        root / "serve.log",
        extra_args=["--no-watch"],
        env={"PROFILE_PG_URL": postgres.url("features_served")},
    )
    with running(server):
        yield server, root


@pytest.fixture
def server(
    request: pytest.FixtureRequest, served: tuple[ServerProcess, Path]
) -> Iterator[ServerProcess]:
    yield served[0]
    print_log_on_failure(request, served[0])


@pytest.fixture(params=["http", "grpc"])
def client(request: pytest.FixtureRequest, server: ServerProcess):
    return make_client(request.param, server)


def assert_still_serving(client) -> None:
    result = infer(client, "doubler", {"x": (np.array([[1.0, 2.0, 3.0]]), "FP64")})
    assert result.as_numpy("predict").tolist() == [[2.0, 4.0, 6.0]]


def test_predict_without_pre_or_postprocess(client) -> None:
    x = np.array([[1.0, 2.0, 3.0], [0.5, 0.25, -1.0]])
    result = infer(client, "doubler", {"x": (x, "FP64")})
    np.testing.assert_array_equal(result.as_numpy("predict"), x * 2)


def test_preprocess_predict_postprocess(client) -> None:
    words = np.array([b" hi ", b"hello world"], dtype=np.object_)
    result = infer(client, "words", {"text": (words, "BYTES")})
    assert result.as_numpy("length").ravel().tolist() == [2, 11]
    assert result.as_numpy("length").dtype == np.int32
    assert texts(result, "size") == ["short", "long"]


def test_user_bad_request_is_400_with_the_users_message(client) -> None:
    words = np.array([b"fine", b"bad"], dtype=np.object_)
    expect_error(
        client, lambda: infer(client, "faulty", {"word": (words, "BYTES")}),
        400, "INVALID_ARGUMENT",
        "model 'faulty': 'bad' is not a word this model knows; send another word",
    )  # fmt: skip
    assert_still_serving(client)


def test_user_crash_is_500_naming_the_request_id_the_log_explains(
    client, server: ServerProcess
) -> None:
    words = np.array([b"crash"], dtype=np.object_)
    message = expect_error(
        client, lambda: infer(client, "faulty", {"word": (words, "BYTES")}),
        500, "INTERNAL",
        "model 'faulty' failed on this request; the server log has the detail under request id",
    )  # fmt: skip
    # The exception's text (a library's, a path of the server) stays in the log.
    assert "ZeroDivisionError" not in message and "division by zero" not in message
    request_id = re.search(r"request id (\S+)", message)
    assert request_id is not None, message
    log = server.log()
    logged = log[log.index(f"request {request_id[1]} failed") :]
    assert "Faulty.predict raised ZeroDivisionError: division by zero" in logged
    assert "Traceback" in logged
    assert_still_serving(client)
    words = np.array([b"four"], dtype=np.object_)
    assert infer(client, "faulty", {"word": (words, "BYTES")}).as_numpy("predict").ravel() == [4]


@pytest.mark.parametrize("model", ["scorer-sqlite", "scorer-pg"])
def test_features_by_id_with_unknown_and_hostile_ids(client, model: str) -> None:
    requested = ["u05", "nobody", *folders.HOSTILE_IDS, "u05", "u00"]
    result = infer(client, model, {"user_id": ids(*requested)})
    assert texts(result, "user_id") == requested
    missing = result.as_numpy("missing").ravel().tolist()
    assert missing == [False, True, True, True, True, False, False]
    scores = result.as_numpy("score").ravel()
    assert scores.dtype == np.float64
    np.testing.assert_allclose(
        scores[[0, 5, 6]], folders.expected_scores(["u05", "u05", "u00"]), rtol=1e-12
    )
    assert np.isnan(scores[1:5]).all()
    assert texts(result, "band")[0] == "low"


def slow_scores(server: ServerProcess, users: list[str]) -> list:
    """Each user asked for at once, by a caller of its own: the answer or the error."""

    def ask(user: str):
        client = make_client("grpc", server)
        try:
            return infer(client, "slow-scorer", {"user_id": ids(user)})
        except Exception as e:
            return e

    with ThreadPoolExecutor(len(users)) as pool:
        return list(pool.map(ask, users))


def test_requests_queued_behind_a_busy_model_share_its_next_call(
    served: tuple[ServerProcess, Path],
) -> None:
    server, root = served
    calls = root / "models" / "slow-scorer" / "calls.log"
    calls.unlink(missing_ok=True)
    users = [f"u{i:02d}" for i in range(10)]
    results = slow_scores(server, users)
    for user, result in zip(users, results, strict=True):
        assert not isinstance(result, Exception), result
        assert texts(result, "user_id") == [user]
        assert result.as_numpy("score").ravel().tolist() == [20.0 + int(user[1:])]
    # Each server process scored its first request alone and, in its next call,
    # the requests that arrived meanwhile: fewer calls than requests, every row once.
    sizes = [int(n) for n in calls.read_text().split()]
    assert sum(sizes) == len(users) and len(sizes) < len(users), sizes


def test_a_request_that_fails_fails_alone_when_scored_with_others(
    served: tuple[ServerProcess, Path],
) -> None:
    server, _ = served
    users = ["u01", "u02", "u39", "u03", "u04", "u05"]  # u39 is 59, which the model refuses
    results = slow_scores(server, users)
    for user, result in zip(users, results, strict=True):
        if user == "u39":
            assert isinstance(result, Exception) and "age 59 is refused" in str(result), result
        else:
            assert not isinstance(result, Exception), (user, result)
            assert texts(result, "user_id") == [user]


def test_features_outputs_can_be_chosen(client) -> None:
    result = infer(client, "scorer-pg", {"user_id": ids("u39")}, outputs=["band"])
    assert texts(result, "band") == ["high"]


def test_features_request_without_the_key(client) -> None:
    expect_error(
        client, lambda: infer(client, "scorer-sqlite", {"id": ids("u01")}),
        400, "INVALID_ARGUMENT", "input 'id'", "'user_id'",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("inputs", "fragments"),
    [
        ({"x": (np.ones((1, 3), dtype=np.float32), "FP32")}, ["'x'", "FP32", "FP64"]),
        ({"x": (np.ones((2, 4)), "FP64")}, ["'x'", "[2, 4]", "[-1, 3]"]),
        ({"y": (np.ones((1, 3)), "FP64")}, ["'y'", "'x'"]),
    ],
    ids=["datatype", "shape", "name"],
)
def test_signature_violations_are_400_naming_input_expected_actual(
    client, inputs: dict, fragments: list[str]
) -> None:
    expect_error(
        client, lambda: infer(client, "doubler", inputs), 400, "INVALID_ARGUMENT", *fragments
    )
    assert_still_serving(client)


def test_pinned_sklearn_model_serves(client) -> None:
    x = np.array([[5.1, 3.5, 1.4, 0.2]])
    assert infer(client, "iris-pinned", {"input-0": (x, "FP64")}).as_numpy("predict").ravel() == [0]


def test_refused_models_show_why_and_the_others_serve(
    server: ServerProcess, served: tuple[ServerProcess, Path], client
) -> None:
    by_name = {m["name"]: m for m in server.status()["models"]}
    tampered = by_name["iris-tampered"]
    assert tampered["state"] == "failed"
    assert "sha256 mismatch for model.joblib" in tampered["error"]
    assert f"expected {folders.sha256(served[1] / 'iris.joblib')}, got " in tampered["error"]
    assert not (served[1] / "pickle-was-loaded").exists(), "the tampered pickle was loaded"

    old = by_name["old-sklearn"]
    assert old["state"] == "failed"
    assert f"scikit-learn: trained with {WRONG_SKLEARN}, installed 1.9.1" in old["error"]

    for name in ("iris-tampered", "old-sklearn"):
        answer = requests.get(f"{server.base}/v2/models/{name}/ready", timeout=5)
        assert answer.status_code != 200, answer.text
    ready = [n for n, m in by_name.items() if m["state"] == "ready"]
    assert sorted(ready) == [
        "doubler", "faulty", "iris-pinned", "scorer-pg", "scorer-sqlite", "slow-scorer",
        "words",
    ]  # fmt: skip
    assert_still_serving(client)
