"""A model served from a real MLflow tracking server's registry (`mlflow server` on
loopback, SQLite backend, local artifact root) by a ``models:/`` URI: an alias is
pinned to the version it names at load, also across a restart of the server; a new
version the alias moves to is swapped in when the folder changes, or when
``--watch-registry`` sees the alias move, with no failed request under load."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from modelyard.serving.registry_uris import PINS_ENV
from tests.support.clients import infer, make_client
from tests.support.mlflow_server import mlflow_server
from tests.support.mlflow_server import point_alias as support_point_alias
from tests.support.mlflow_server import register as support_register
from tests.support.server import ServerProcess

X, Y = load_iris(return_X_y=True)
ROWS = X[::10]


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as url:
        yield url


def register(url: str, model: LogisticRegression, name: str = "iris-churn") -> str:
    """Log ``model`` to the tracking server as a new version of ``name``; its version."""
    return support_register(url, model, X, Y, name)


def point_alias(url: str, version: str, name: str = "iris-churn") -> None:
    support_point_alias(url, name, version)


def declare(folder: Path, version: str, name: str = "iris-churn") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    decl = {
        "name": "churn",
        "version": version,
        "runtime": "mlflow",
        "model": {"uri": f"models:/{name}@champion"},
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
    env = {"MLFLOW_TRACKING_URI": tracking, PINS_ENV: str(tmp_path / "pins.json")}
    server = ServerProcess(models, tmp_path / "serve.log", env=env).start()
    try:
        server.wait_ready(timeout=300)
        client = make_client("grpc", server)
        name = "input-0"
        result = infer(client, "churn", {name: (ROWS, "FP64")})
        assert result.as_numpy("output-0").ravel().tolist() == first.predict(ROWS).tolist()
        assert f"models:/iris-churn@champion is models:/iris-churn/{v1} (resolved)" in server.log()

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
        assert f"models:/iris-churn@champion is models:/iris-churn/{v2} (resolved)" in server.log()
    except BaseException:
        print(server.log())
        raise
    finally:
        server.stop()


class Callers:
    """Four REST callers of ``churn`` until stopped, counting answers and failures."""

    def __init__(self, server: ServerProcess):
        self.server = server
        self.failures: list[str] = []
        self.answered = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._call) for _ in range(4)]

    def _call(self) -> None:
        caller = make_client("http", self.server)
        while not self._stop.is_set():
            try:
                infer(caller, "churn", {"input-0": (ROWS, "FP64")})
                self.answered += 1
            except Exception as e:
                self.failures.append(repr(e))

    def __enter__(self) -> Callers:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


def served(server: ServerProcess) -> dict:
    return {s["name"]: s for s in server.status()["models"]}["churn"]


def answers(server: ServerProcess) -> list[int]:
    result = infer(make_client("grpc", server), "churn", {"input-0": (ROWS, "FP64")})
    return result.as_numpy("output-0").ravel().astype(int).tolist()


def test_pinned_across_a_restart_and_moved_by_watching_the_registry(
    tracking: str, tmp_path: Path
) -> None:
    """The alias moves while the server is down: started again, it serves the version
    it pinned. With --watch-registry, it follows the alias under load, and pins that."""
    name = "iris-watched"
    first = LogisticRegression(max_iter=1000).fit(X, Y)
    second = LogisticRegression(max_iter=1000).fit(X, np.choose(Y, [1, 0, 2]))
    v1 = register(tracking, first, name)
    point_alias(tracking, v1, name)
    models = tmp_path / "models"
    declare(models / "churn", "1", name)
    env = {"MLFLOW_TRACKING_URI": tracking, PINS_ENV: str(tmp_path / "pins.json")}
    uri = f"models:/{name}@champion"
    # Beside it: the same version by its run, and an alias the registry does not have.
    from mlflow.tracking import MlflowClient

    run_id = MlflowClient(tracking).get_model_version(name, v1).run_id
    for folder, named in (("by-run", f"runs:/{run_id}/model"), ("ghost", f"models:/{name}@nobody")):
        (models / folder).mkdir()
        decl = {"name": folder, "version": "1", "runtime": "mlflow", "model": {"uri": named}}
        (models / folder / "model.yaml").write_text(yaml.safe_dump(decl))

    def start(*args: str) -> ServerProcess:
        log = tmp_path / f"serve-{len(list(tmp_path.glob('serve-*')))}.log"
        server = ServerProcess(models, log, ["--processes", "1", *args], env).start()
        try:
            server.wait_ready(timeout=300)
        except BaseException:
            server.stop()
            raise
        return server

    server = start()
    try:
        registry = served(server)["registry"]
        assert registry["uri"] == uri
        assert registry["pinned"] == f"models:/{name}/{v1}"
        assert registry["version"] == v1
        assert len(registry["run_id"]) == 32
        # The files of the version: the local artifact root's copy of the model.
        assert (Path(registry["source"].removeprefix("file://")) / "MLmodel").is_file()
        assert answers(server) == first.predict(ROWS).tolist()
        table = subprocess.run(
            [str(Path(sys.executable).parent / "modelyard"), "status", "--url", server.base],
            capture_output=True, text=True,
        )  # fmt: skip
        assert table.returncode == 1  # a folder failed: the ghost below
        assert f"churn: {uri} is version {v1} (run {registry['run_id']}" in table.stdout
        statuses = {s["name"]: s for s in server.status()["models"]}
        by_run = statuses["by-run"]["registry"]
        assert by_run["pinned"] == f"runs:/{run_id}/model" and by_run["version"] is None
        assert by_run["run_id"] == run_id and by_run["source"].endswith("/model")
        assert statuses["by-run"]["state"] == "ready"
        ghost = statuses["ghost"]
        assert ghost["state"] == "failed" and ghost["registry"] is None
        assert f"models:/{name}@nobody: the registry at {tracking} answered" in ghost["error"]
        assert "MLFLOW_TRACKING_URI" in ghost["error"]
    finally:
        server.stop()

    v2 = register(tracking, second, name)
    point_alias(tracking, v2, name)
    server = start()  # the same folder: the pin holds although the alias moved
    try:
        assert served(server)["registry"]["version"] == v1
        assert answers(server) == first.predict(ROWS).tolist()
        assert f"{uri} is models:/{name}/{v1} (pinned)" in server.log()
    finally:
        server.stop()

    point_alias(tracking, v1, name)
    server = start("--watch-registry", "--registry-poll-s", "0.5")
    try:
        assert served(server)["registry"]["version"] == v1
        with Callers(server) as callers:
            point_alias(tracking, v2, name)
            deadline = time.monotonic() + 240
            while served(server)["registry"]["version"] != v2:
                assert time.monotonic() < deadline, server.log()
                time.sleep(0.5)
            answered = callers.answered
            while callers.answered < answered + 20:  # calls on the new version too
                time.sleep(0.1)
        assert callers.failures == []
        assert answers(server) == second.predict(ROWS).tolist()
        assert f"{uri} moved from models:/{name}/{v1} to models:/{name}/{v2}" in server.log()
    except BaseException:
        print(server.log())
        raise
    finally:
        server.stop()

    server = start()  # what the watch moved to is the pin now
    try:
        assert served(server)["registry"]["version"] == v2
        assert answers(server) == second.predict(ROWS).tolist()
    finally:
        server.stop()
