"""Models on Python packages of their own: a folder's requirements.txt built into an
environment, the model served by a worker on it, side by side with the others.

The environments are built from PyPI into a persistent cache (a second run is warm)
from two tiny pure-Python wheels: six (the server has 1.17.0; a folder pins 1.16.0)
and humanize (the server has none).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from modelyard.environments import envs_dir
from tests.support.server import ServerProcess, running

ENVS = Path.home() / ".cache" / "modelyard" / "test-envs"
ONE = ("--processes", "1", "--no-pin")

PREDICTOR = """
import os
from importlib.metadata import version

import numpy as np


class Reporter:
    def predict(self, instances):
        import {module}  # the folder's own package, from its environment

        parts = [int(p) for p in version("{package}").split(".")[:3]]
        number = parts[0] * 10000 + parts[1] * 100 + parts[2]
        rows = len(instances)
        return {{
            "version": np.full((rows, 1), number, dtype=np.float64),
            "pid": np.full((rows, 1), os.getpid(), dtype=np.float64),
        }}
"""

DECLARATION = """
name: {name}
version: "1"
runtime: predictor
predictor: predictor.py:Reporter
model: {{uri: predictor.py{versions}}}
{environment}
inputs:
  - {{name: x, datatype: FP64, shape: [-1, 1]}}
outputs:
  - {{name: version, datatype: FP64, shape: [-1, 1]}}
  - {{name: pid, datatype: FP64, shape: [-1, 1]}}
example:
  inputs:
    - {{name: x, datatype: FP64, shape: [1, 1], data: [[1.0]]}}
"""


def write_folder(
    folder: Path,
    package: str,
    requirements: str | None,
    declared: bool = False,
    versions: str = "",
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    module = package.replace("-", "_")
    (folder / "predictor.py").write_text(PREDICTOR.format(module=module, package=package))
    environment = ""
    if requirements is not None:
        name = "deps.txt" if declared else "requirements.txt"
        (folder / name).write_text(requirements)
        environment = f"python: {{requirements: {name}}}" if declared else ""
    (folder / "model.yaml").write_text(
        DECLARATION.format(
            name=folder.name,
            environment=environment,
            versions=f", versions: {{{versions}}}" if versions else "",
        )
    )


ITEM = "{name: item, datatype: BYTES, shape: [-1]}"
COMPANIONS = """
features: {sql: features.sql, source: "sqlite:///features.db", key: item}
predictions:
  columns: {item: BYTES, six_version: FP64, worker_pid: FP64}
  store: sqlite:///predictions.db
monitoring:
  payload_sample_rate: 1.0
  task: regression
  prediction: six_version
"""


def answer(server: ServerProcess, name: str) -> tuple[int, int]:
    """(the library version the model reports, as major*10000+minor*100+patch; its pid)."""
    body = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 1], "data": [1.0]}]}
    r = requests.post(f"{server.base}/v2/models/{name}/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o["data"][0] for o in r.json()["outputs"]}
    return int(outputs["version"]), int(outputs["pid"])


def status_of(server: ServerProcess, name: str) -> dict:
    return next(m for m in server.status()["models"] if Path(m["folder"]).name == name)


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("envs") / "models"
    write_folder(root / "pinned-six", "six", "six==1.16.0\n")
    write_folder(
        root / "humanizer", "humanize", "humanize==4.9.0\n", declared=True,
        versions="humanize: 4.9.0",
    )  # fmt: skip
    write_folder(root / "server-six", "six", None)
    # The same requirements as pinned-six (one environment, warm), with companions.
    write_folder(root / "logged-six", "six", "six==1.16.0\n")
    declaration = root / "logged-six" / "model.yaml"
    # Called by entity id: its rows come from its features.
    text = declaration.read_text().split("example:")[0]
    text = text.replace("{name: x, datatype: FP64, shape: [-1, 1]}", ITEM)
    # A predictor returns its prediction columns (version is a column the store adds).
    for old, new in (("version", "six_version"), ("pid", "worker_pid")):
        text = text.replace(f"{{name: {old},", f"{{name: {new},")
        predictor = root / "logged-six" / "predictor.py"
        predictor.write_text(predictor.read_text().replace(f'"{old}":', f'"{new}":'))
    declaration.write_text(text + COMPANIONS)
    (root / "logged-six" / "features.sql").write_text("SELECT item, x FROM items\n")
    with sqlite3.connect(root / "logged-six" / "features.db") as features:
        features.execute("CREATE TABLE items (item TEXT, x REAL)")
        features.execute("INSERT INTO items VALUES ('i1', 1.0)")
    features.close()
    # numpy is held to the server's version: the worker and the server exchange arrays.
    write_folder(root / "conflicting", "six", "numpy==1.26.4\nsix\n")
    return root


@pytest.fixture(scope="module")
def server(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("envs-log") / "server.log"
    proc = ServerProcess(models, log, ONE, env={"MODELYARD_ENVS_DIR": str(ENVS)})
    with running(proc) as started:
        yield started


def test_folders_pinning_other_versions_are_served_side_by_side(server: ServerProcess) -> None:
    six_version, six_pid = answer(server, "pinned-six")
    assert six_version == 11600  # the folder's pin, not the server's 1.17.0
    humanize_version, humanize_pid = answer(server, "humanizer")
    assert humanize_version == 40900  # a library the server does not have
    server_version, server_pid = answer(server, "server-six")
    assert server_version == 11700  # in process, on the server's packages
    server_proc = server.proc
    assert server_proc is not None
    assert server_pid != six_pid and server_pid != humanize_pid and six_pid != humanize_pid
    # One environment per distinct requirements, under the configured cache.
    assert len(list(ENVS.glob("*/modelyard-env.json"))) >= 2


def test_a_model_on_its_environment_has_companions_and_its_payloads_logged(
    server: ServerProcess, models: Path
) -> None:
    status = status_of(server, "logged-six")
    assert status["state"] == "ready", status.get("error")
    assert sorted(status["companions"]) == ["logged-six-feedback", "logged-six-lookup"]
    sent = [f"env-{i}" for i in range(5)]
    for request_id in sent:
        item = {"name": "item", "datatype": "BYTES", "shape": [1], "data": ["i1"]}
        body = {"id": request_id, "inputs": [item]}
        r = requests.post(f"{server.base}/v2/models/logged-six/infer", json=body, timeout=30)
        assert r.status_code == 200, r.text
        outputs = {o["name"]: o["data"] for o in r.json()["outputs"]}
        assert outputs["six_version"] == [11600.0]  # answered on its environment

    def logged() -> dict[str, str]:
        engine = sa.create_engine(f"sqlite:///{models / 'logged-six' / 'predictions.db'}")
        try:
            with engine.connect() as conn:
                rows = conn.execute(sa.text("SELECT request_id, response FROM modelyard_payloads"))
                return dict(rows.all())
        except sa.exc.OperationalError:
            return {}  # the table is made with the first write
        finally:
            engine.dispose()

    wait_for(lambda: set(sent) <= set(logged()), 60, "the payloads logged")
    assert all("11600" in logged()[i] for i in sent)

    def call(name: str, inputs: list[dict]) -> dict[str, list]:
        r = requests.post(f"{server.base}/v2/models/{name}/infer", json={"inputs": inputs},
                          timeout=30)  # fmt: skip
        assert r.status_code == 200, r.text
        return {o["name"]: o["data"] for o in r.json()["outputs"]}

    # A batch run, on the same environment, is what its lookup answers.
    folder = models / "logged-six"
    run = subprocess.run(
        [sys.executable, "-m", "modelyard", "batch", "run", str(folder)],
        env={**os.environ, "MODELYARD_ENVS_DIR": str(ENVS)}, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    asked = {"name": "item", "datatype": "BYTES", "shape": [2], "data": ["i1", "nobody"]}
    found = call("logged-six-lookup", [asked])
    assert found["six_version"][0] == 11600.0  # scored on the folder's six
    assert found["missing"] == [False, True]
    received = call("logged-six-feedback", [
        {"name": "request_id", "datatype": "BYTES", "shape": [5], "data": sent},
        {"name": "label", "datatype": "FP64", "shape": [5], "data": [1.0] * 5},
    ])  # fmt: skip
    assert received["received"] == [5]


def test_a_conflicting_pin_is_reported_with_the_resolvers_message(server: ServerProcess) -> None:
    status = status_of(server, "conflicting")
    assert status["state"] == "failed"
    assert status["serving_version"] is None
    assert "numpy" in status["error"] and "unsatisfiable" in status["error"], status["error"]
    assert answer(server, "pinned-six")[0] == 11600  # the others serve on


def test_a_requirements_change_is_swapped_under_load_without_a_failure(
    server: ServerProcess, models: Path
) -> None:
    failures: list[str] = []
    seen: set[int] = set()
    stop = threading.Event()

    def load() -> None:
        body = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 1], "data": [1.0]}]}
        while not stop.is_set():
            r = requests.post(f"{server.base}/v2/models/pinned-six/infer", json=body, timeout=30)
            if r.status_code != 200:
                failures.append(r.text)
            else:
                seen.add(int(r.json()["outputs"][0]["data"][0]))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        (models / "pinned-six" / "requirements.txt").write_text("six==1.15.0\n")
        wait_for(lambda: 11500 in seen, 120, "the new environment's answers")
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert seen == {11600, 11500}
    assert answer(server, "pinned-six")[0] == 11500


def test_a_killed_worker_is_restarted_and_reported_while_down(server: ServerProcess) -> None:
    _, pid = answer(server, "humanizer")
    answers: list[tuple[int, int | None]] = []  # (status, pid answering)
    stop = threading.Event()

    def load() -> None:
        body = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 1], "data": [1.0]}]}
        while not stop.is_set():
            r = requests.post(f"{server.base}/v2/models/humanizer/infer", json=body, timeout=30)
            by = int(r.json()["outputs"][1]["data"][0]) if r.status_code == 200 else None
            answers.append((r.status_code, by))

    thread = threading.Thread(target=load)
    thread.start()
    reported: list[list[str]] = []
    try:
        time.sleep(0.3)
        os.kill(pid, signal.SIGKILL)
        wait_for(
            lambda: bool(r := server.status()["workers_restarting"]) and not reported.append(r),
            30,
            "the model reported while its worker restarts",
        )
        wait_for(
            lambda: any(by not in (None, pid) for _, by in answers[-5:]),
            60,
            "answers from the restarted worker",
        )
    finally:
        stop.set()
        thread.join()
    assert reported[0] == ["humanizer"]
    assert server.status()["workers_restarting"] == []
    # Answered by the old worker, then (while it restarts) errors, then the new one.
    assert answers[0] == (200, pid)
    assert {status for status, _ in answers} <= {200, 500, 503}
    assert answer(server, "humanizer")[0] == 40900


def test_the_envs_directory_is_configurable() -> None:
    old = os.environ.get("MODELYARD_ENVS_DIR")
    os.environ["MODELYARD_ENVS_DIR"] = str(ENVS)
    try:
        assert envs_dir() == ENVS
    finally:
        if old is None:
            del os.environ["MODELYARD_ENVS_DIR"]
        else:
            os.environ["MODELYARD_ENVS_DIR"] = old


# -- `modelyard serve --workers N`: MLServer's own pool, one per environment -------------


@pytest.fixture(scope="module")
def workers_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("envs-workers") / "models"
    # The same requirements as pinned-six above: the environment is built already.
    write_folder(root / "pinned-six", "six", "six==1.16.0\n")
    write_folder(root / "server-six", "six", None)
    log = tmp_path_factory.mktemp("envs-workers-log") / "server.log"
    args = ("--workers", "2", *ONE)
    proc = ServerProcess(root, log, args, env={"MODELYARD_ENVS_DIR": str(ENVS)})
    with running(proc) as started:
        yield started


def pids_answering(server: ServerProcess, name: str, wanted: int, timeout: float) -> set[int]:
    """The pids answering ``name`` until ``wanted`` distinct ones have (each answer with
    the folder's own six)."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < wanted and time.monotonic() < deadline:
        version, pid = answer(server, name)
        assert version == 11600  # six 1.16.0, the folder's, not the server's 1.17.0
        seen.add(pid)
    return seen


def test_with_workers_every_worker_serves_the_model_on_its_environment(
    workers_server: ServerProcess,
) -> None:
    server_pid = workers_server.status()["pid"]
    workers = pids_answering(workers_server, "pinned-six", 2, 30)
    assert len(workers) == 2 and server_pid not in workers
    # The model without requirements is answered by the same workers, on the server's six.
    version, _ = answer(workers_server, "server-six")
    assert version == 11700


def test_with_workers_a_killed_worker_is_restarted_on_its_environment(
    workers_server: ServerProcess,
) -> None:
    workers = pids_answering(workers_server, "pinned-six", 2, 30)
    killed = min(workers)
    os.kill(killed, signal.SIGKILL)
    # Two live workers again, one of them new, both on the folder's six.
    deadline = time.monotonic() + 60
    after: set[int] = set()
    while time.monotonic() < deadline and not (len(after) == 2 and after - workers):
        body = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 1], "data": [1.0]}]}
        url = f"{workers_server.base}/v2/models/pinned-six/infer"
        r = requests.post(url, json=body, timeout=30)
        if r.status_code == 200:
            outputs = {o["name"]: o["data"][0] for o in r.json()["outputs"]}
            assert int(outputs["version"]) == 11600
            after.add(int(outputs["pid"]))
            after &= {p for p in after if p != killed}
        time.sleep(0.02)
    assert killed not in after
    assert len(after) == 2 and len(after - workers) == 1, (workers, after)
