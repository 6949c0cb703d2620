"""A model served from a real MLflow tracking server's registry (`mlflow server` on
loopback, SQLite backend, local artifact root) by a ``models:/`` URI: an alias is
pinned to the version it names at load, and a new version the alias moves to is swapped
in when the folder changes, with no failed request under load."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from tests.support.clients import infer, make_client
from tests.support.server import ServerProcess, free_port

X, Y = load_iris(return_X_y=True)
ROWS = X[::10]


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = (root / "mlflow.log").open("wb")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"), "server",
            "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--default-artifact-root", str(root / "artifacts"),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if requests.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((root / "mlflow.log").read_text(errors="replace"))
            time.sleep(0.5)
        yield url
    finally:
        # mlflow server's workers take their time over SIGTERM: then they are killed.
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()


def register(url: str, model: LogisticRegression) -> str:
    """Log ``model`` to the tracking server as a new version of iris-churn; its version."""
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature

    mlflow.set_tracking_uri(url)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mlflow.start_run():
            info = mlflow.sklearn.log_model(
                model, name="model", registered_model_name="iris-churn",
                signature=infer_signature(X, Y),
            )  # fmt: skip
    return str(info.registered_model_version)


def point_alias(url: str, version: str) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(url).set_registered_model_alias("iris-churn", "champion", version)


def declare(folder: Path, version: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    decl = {
        "name": "churn",
        "version": version,
        "runtime": "mlflow",
        "model": {"uri": "models:/iris-churn@champion"},
    }
    (folder / "model.yaml").write_text(yaml.safe_dump(decl, sort_keys=False))


def test_served_by_alias_then_swapped_to_the_new_version_under_load(
    tracking: str, tmp_path: Path
) -> None:
    first = LogisticRegression(max_iter=1000).fit(X, Y)
    # The second version answers differently: it was trained with two classes swapped.
    second = LogisticRegression(max_iter=1000).fit(X, np.choose(Y, [1, 0, 2]))
    assert (first.predict(ROWS) != second.predict(ROWS)).any()
    v1 = register(tracking, first)
    point_alias(tracking, v1)
    models = tmp_path / "models"
    declare(models / "churn", "1")
    server = ServerProcess(
        models, tmp_path / "serve.log", env={"MLFLOW_TRACKING_URI": tracking}
    ).start()
    try:
        server.wait_ready(timeout=300)
        client = make_client("grpc", server)
        name = "input-0"
        result = infer(client, "churn", {name: (ROWS, "FP64")})
        assert result.as_numpy("output-0").ravel().tolist() == first.predict(ROWS).tolist()
        assert f"models:/iris-churn@champion is models:/iris-churn/{v1}" in server.log()

        v2 = register(tracking, second)
        point_alias(tracking, v2)
        failures: list[str] = []
        answered = [0]
        stop = threading.Event()

        def load() -> None:
            caller = make_client("http", server)
            while not stop.is_set():
                try:
                    infer(caller, "churn", {name: (ROWS, "FP64")})
                    answered[0] += 1
                except Exception as e:
                    failures.append(repr(e))

        callers = [threading.Thread(target=load) for _ in range(4)]
        for t in callers:
            t.start()
        try:
            declare(models / "churn", "2")  # the folder changes: the registry reloads it
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                status = {s["name"]: s for s in server.status()["models"]}["churn"]
                if status["serving_version"] == "2":
                    break
                time.sleep(0.5)
            time.sleep(1.0)  # traffic on the new version too
        finally:
            stop.set()
            for t in callers:
                t.join()
        assert status["serving_version"] == "2", status
        assert failures == []
        assert answered[0] > 0
        result = infer(client, "churn", {name: (ROWS, "FP64")})
        assert result.as_numpy("output-0").ravel().tolist() == second.predict(ROWS).tolist()
        assert f"models:/iris-churn@champion is models:/iris-churn/{v2}" in server.log()
    except BaseException:
        print(server.log())
        raise
    finally:
        server.stop()
