"""The operator's pin of a Model's MLflow registry URI, against a real ``mlflow server``:
an alias is pinned to the version it names, moved when the alias moves (saying from
which version to which), and held when the alias names nothing or the tracking server
cannot be reached."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from modelyard_operator.registry import resolve_pin
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from tests.support.mlflow_server import mlflow_server, point_alias, register
from tests.support.server import free_port

X, Y = load_iris(return_X_y=True)
NAME = "operator-churn"
URI = f"models:/{NAME}@champion"


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as url:
        yield url


def test_an_alias_is_pinned_moved_and_held(tracking: str, monkeypatch: pytest.MonkeyPatch) -> None:
    v1 = register(tracking, LogisticRegression(max_iter=1000).fit(X, Y), X, Y, NAME)
    v2 = register(
        tracking, LogisticRegression(max_iter=1000).fit(X, np.choose(Y, [1, 0, 2])), X, Y, NAME
    )
    point_alias(tracking, NAME, v1)

    first = resolve_pin(URI, tracking, None)
    assert first.error is None and first.moved is None
    assert first.pinned == f"models:/{NAME}/{v1}"
    assert first.status is not None
    assert first.status["version"] == v1 and first.status["uri"] == URI
    assert first.status["trackingUri"] == tracking
    assert first.status["runId"] and first.status["source"]

    # Asked again with the alias where it was: the same pin, the same resolvedAt.
    assert resolve_pin(URI, tracking, first.status).status == first.status

    point_alias(tracking, NAME, v2)
    second = resolve_pin(URI, tracking, first.status)
    assert second.error is None
    assert second.pinned == f"models:/{NAME}/{v2}"
    assert second.moved == f"from version {v1} to version {v2}"
    assert second.status is not None and second.status["runId"] != first.status["runId"]

    # The alias removed: the pin is held, and the message names the URI and what to check.
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking).delete_registered_model_alias(NAME, "champion")
    held = resolve_pin(URI, tracking, second.status)
    assert held.status == second.status and held.moved is None
    assert held.error is not None
    assert held.error.startswith(f"{URI}: the registry at {tracking} answered")
    assert f"version {v2} (models:/{NAME}/{v2}) stays pinned" in held.error

    # Nothing pinned yet and nothing to pin: no status, and the reason.
    fresh = resolve_pin(URI, tracking, None)
    assert fresh.status is None and fresh.pinned is None
    assert fresh.error is not None and "nothing is served yet" in fresh.error

    # A tracking server that cannot be reached: the pin is held too.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    gone = f"http://127.0.0.1:{free_port()}"
    moved_server = {**second.status, "trackingUri": gone}
    down = resolve_pin(URI, gone, moved_server)
    assert down.status == moved_server and down.error is not None
    assert down.error.startswith(f"{URI}: the registry at {gone} answered")

    # A pin held for another URI is not kept for this one.
    other = resolve_pin(f"models:/{NAME}/{v1}", tracking, second.status)
    assert other.moved is None and other.pinned == f"models:/{NAME}/{v1}"
