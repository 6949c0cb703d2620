"""The serving core against a real `modelyard serve` with two processes: ports that are
its own, processes that agree on what they serve, and errors and metrics that tell the
truth."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.serving.test_live_registry import (
    SETOSA,
    folder_status,
    iris_version,
    wait_for,
    write_iris,
    write_slow,
)
from tests.support.server import MODELYARD, REPO, ServerProcess, free_port

TWO = ("--processes", "2", "--no-pin")
# The repository API is refused without an admin token.
ADMIN = {"MODELYARD_ADMIN_TOKEN": "core-admin-token"}
AS_ADMIN = {"Authorization": "Bearer core-admin-token"}


def fresh_iris_call(server: ServerProcess) -> int:
    """One call on a new connection (the kernel picks the process), its status code."""
    body = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 4], "data": SETOSA}]}
    with requests.Session() as s:
        return s.post(f"{server.base}/v2/models/iris/infer", json=body, timeout=10).status_code


def child_pids(server: ServerProcess) -> list[int]:
    assert server.proc is not None
    out = subprocess.run(
        ["pgrep", "-P", str(server.proc.pid), "-f", "modelyard serve"],
        capture_output=True,
        text=True,
    ).stdout
    return sorted(int(p) for p in out.split())


def process_pid(server: ServerProcess, index: int) -> int:
    """The pid of the server's process ``index``, as its status publishes it (pids wrap:
    process 0 need not have the lower one)."""
    pid = server.status()["processes"][index]["pid"]
    assert pid in child_pids(server), (pid, child_pids(server))
    return int(pid)


def kill_one(server: ServerProcess, which: int) -> None:
    """SIGKILL one of the server's processes; returns once the supervisor started another."""
    pids = child_pids(server)
    assert len(pids) == 2, pids
    os.kill(process_pid(server, which), signal.SIGKILL)
    wait_for(lambda: len(set(child_pids(server)) - set(pids)) == 1, what="a new process")


def metrics_text(server: ServerProcess) -> str:
    return requests.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).text


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one series in Prometheus' text format, or None when it is absent."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        got = dict(
            part.split("=", 1) for part in line[len(name) + 1 : line.rindex("}")].split(",") if part
        )
        if all(got.get(k) == json.dumps(v) for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


# -- 1. the ports are this server's own --------------------------------------------------


def test_a_second_server_on_the_same_ports_is_refused(serve_dir, tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_iris(models / "iris", "1")
    first = serve_dir(models, *TWO)
    other = tmp_path / "other"
    write_iris(other / "iris", "2")
    second = ServerProcess(
        other,
        tmp_path / "second.log",
        extra_args=TWO,
        http_port=first.http_port,
        grpc_port=first.grpc_port,
        metrics_port=first.metrics_port,
    ).start()
    assert second.proc is not None
    try:
        code = second.proc.wait(timeout=15)
    finally:
        second.stop()
    assert code != 0
    lines = [line for line in second.log().splitlines() if line.strip()]
    assert lines == [
        f"Error: port {first.http_port} on 127.0.0.1 is in use by another program; "
        "stop it, or serve on another port with --http-port"
    ], second.log()
    # Every call still reaches the first server's directory.
    assert {iris_version(first) for _ in range(20)} == {"1"}


def test_an_unrelated_program_on_the_port_is_refused_at_once(tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_iris(models / "iris", "1")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        start = time.monotonic()
        done = subprocess.run(
            [MODELYARD, "serve", str(models), *TWO, "--grpc-port", str(port),
             "--http-port", str(free_port()), "--metrics-port", str(free_port())],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 2
    assert time.monotonic() - start < 10
    assert done.stderr.strip().splitlines() == [
        f"Error: port {port} on 127.0.0.1 is in use by another program; "
        "stop it, or serve on another port with --grpc-port"
    ], done.stderr
    assert "Traceback" not in done.stdout + done.stderr


# -- 2. a restarted process takes connections once it serves what its siblings do -------


def test_a_restarted_process_answers_only_once_loaded(serve_dir, tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_iris(models / "iris", "1")
    write_slow(models / "slow", delay=6.0)
    server = serve_dir(models, *TWO)
    kill_one(server, 0)
    # The new process loads for 6 s: every new connection meanwhile, and after, is
    # answered by a process that serves iris, and readiness stays true.
    codes, slowest = [], 0.0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        start = time.monotonic()
        codes.append(fresh_iris_call(server))
        slowest = max(slowest, time.monotonic() - start)
        assert requests.get(f"{server.base}/v2/health/ready", timeout=5).status_code == 200
    assert set(codes) == {200}, codes
    assert slowest < 2.0
    wait_for(
        lambda: [p["ready"] for p in server.status()["processes"]] == [True, True],
        timeout=30,
        what="the new process to serve",
    )


# -- 3. the repository API acts on every process -----------------------------------------


def test_repository_unload_and_load_reach_every_process(serve_dir, tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_iris(models / "iris", "1")
    server = serve_dir(models, *TWO, **ADMIN)
    r = requests.post(
        f"{server.base}/v2/repository/models/iris/unload", headers=AS_ADMIN, timeout=30
    )
    assert r.status_code == 200, r.text
    assert {fresh_iris_call(server) for _ in range(20)} == {404}
    assert folder_status(server, "iris")["state"] == "unloaded"
    assert requests.get(f"{server.base}/v2/models/iris/ready", timeout=5).status_code != 200
    index = requests.post(
        f"{server.base}/v2/repository/index", json={}, headers=AS_ADMIN, timeout=5
    ).json()
    assert [(m["name"], m["state"]) for m in index] == [("iris", "UNAVAILABLE")]
    shown = subprocess.run(
        [MODELYARD, "status", "--url", server.base], capture_output=True, text=True, timeout=30
    )
    assert shown.returncode == 0, shown.stderr
    assert "unloaded" in shown.stdout
    assert "process 0" in shown.stdout and "process 1" in shown.stdout

    r = requests.post(f"{server.base}/v2/repository/models/iris/load", headers=AS_ADMIN, timeout=30)
    assert r.status_code == 200, r.text
    assert {fresh_iris_call(server) for _ in range(20)} == {200}
    assert folder_status(server, "iris")["state"] == "ready"
    assert requests.get(f"{server.base}/v2/models/iris/ready", timeout=5).status_code == 200


def test_an_unloaded_model_stays_unloaded_in_a_restarted_process(serve_dir, tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_iris(models / "iris", "1")
    server = serve_dir(models, *TWO, **ADMIN)
    r = requests.post(
        f"{server.base}/v2/repository/models/iris/unload", headers=AS_ADMIN, timeout=30
    )
    assert r.status_code == 200, r.text
    kill_one(server, 1)
    wait_for(lambda: all(p["ready"] for p in server.status()["processes"]), what="both ready")
    assert {fresh_iris_call(server) for _ in range(20)} == {404}


# -- 4. the warm-up answer goes through the output checks -------------------------------

PREDICTOR = """
import numpy as np


class Scorer:
    def load(self, artifacts_dir):
        pass

    def predict(self, instances):
        return np.asarray(instances, dtype=np.float64).sum(axis=1, keepdims=True)

    def postprocess(self, predictions):
        return {{"{output}": predictions}}
"""

LOW_CODE = """
name: scorer
version: "{version}"
runtime: predictor
predictor: predictor.py:Scorer
model: {{uri: predictor.py}}
inputs:
  - {{name: input-0, datatype: FP64, shape: [-1, 4]}}
outputs:
  - {{name: score, datatype: FP64, shape: [-1, 1]}}
example:
  inputs:
    - {{name: input-0, datatype: FP64, shape: [1, 4], data: [[1.0, 2.0, 3.0, 4.0]]}}
"""


def write_scorer(folder: Path, version: str, output: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "predictor.py").write_text(PREDICTOR.format(output=output))
    (folder / "model.yaml").write_text(LOW_CODE.format(version=version))


def score(server: ServerProcess) -> tuple[int, dict]:
    body = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 4], "data": SETOSA}]}
    r = requests.post(f"{server.base}/v2/models/scorer/infer", json=body, timeout=10)
    return r.status_code, r.json()


def test_a_warm_up_answer_outside_the_declared_outputs_never_takes_traffic(
    serve_dir, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    write_scorer(models / "scorer", "1", "score")
    server = serve_dir(models, *TWO)
    assert score(server)[1]["model_version"] == "1"

    write_scorer(models / "scorer", "2", "scor")
    wait_for(  # in both processes: a status call reaches one of them
        lambda: all(folder_status(server, "scorer")["state"] == "failed" for _ in range(10)),
        what="the failure",
    )
    error = folder_status(server, "scorer")["error"]
    assert "did not return its declared output 'score'" in error, error
    assert "warm-up" in error
    for _ in range(10):
        code, body = score(server)
        assert (code, body["model_version"]) == (200, "1"), body


# -- 5. a metrics port busy for a moment ------------------------------------------------


def test_a_busy_metrics_port_does_not_take_the_server_down(serve_dir, tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_iris(models / "iris", "1")
    server = serve_dir(models, *TWO)
    assert sample(metrics_text(server), "modelyard_registry_loads_total", model="iris") == 2
    first = process_pid(server, 0)  # process 0 serves the metrics
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: _bound(blocker, server.metrics_port), what="the metrics port taken")
    blocker.listen()
    time.sleep(4)  # the new process 0 finds the port busy
    assert {fresh_iris_call(server) for _ in range(10)} == {200}
    blocker.close()
    wait_for(lambda: _scrapes(server), timeout=30, what="metrics back")
    log = server.log()
    assert log.count("restarting") == 1, log
    assert "giving up" not in log
    assert "is busy" in log


def _bound(sock: socket.socket, port: int) -> bool:
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        return False
    return True


def _scrapes(server: ServerProcess) -> bool:
    try:
        return "modelyard_registry_loads_total" in metrics_text(server)
    except requests.ConnectionError:
        return False


# -- 6. a file still being copied is not a failure --------------------------------------


def test_an_artifact_still_being_copied_is_not_reported(serve_dir, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    server = serve_dir(models, *TWO)
    folder = models / "iris"
    folder.mkdir()
    write_iris(folder, "1", artifact=False)
    data = (REPO / "model-settings/iris/model.joblib").read_bytes()
    with (folder / "model.joblib").open("wb") as f:  # a slow copy: 8 pieces over 1.6 s
        for i in range(8):
            f.write(data[i * len(data) // 8 : (i + 1) * len(data) // 8])
            f.flush()
            time.sleep(0.2)
    wait_for(lambda: iris_version(server) == "1", what="iris once copied")
    assert sample(metrics_text(server), "modelyard_registry_failures_total", model="iris") == 0
    assert "failed to load" not in server.log()


# -- 7. corrupt artifacts ----------------------------------------------------------------


def test_corrupt_artifacts_are_named_with_the_fix(serve_dir, tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(REPO / "model-settings/iris", models / "iris")
    shutil.copytree(REPO / "model-settings/breast-cancer", models / "breast-cancer")
    damage(models / "iris/model.joblib")
    damage(models / "breast-cancer/model.ubj")
    server = serve_dir(models, *TWO)
    iris = folder_status(server, "iris")["error"]
    assert iris.startswith(
        "model 'iris': model.joblib is not a readable scikit-learn/joblib file ("
    ), iris
    assert iris.endswith("); re-export it"), iris
    xgb = folder_status(server, "breast-cancer")["error"]
    assert xgb.startswith("model 'breast-cancer': model.ubj is not a readable XGBoost file ("), xgb
    assert len(xgb.splitlines()) == 1, xgb  # not XGBoost's C stack

    done = subprocess.run(
        [MODELYARD, "validate", str(models)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0, done.stdout
    assert "model.joblib is not a readable scikit-learn/joblib file" in done.stdout + done.stderr
    assert "model.ubj is not a readable XGBoost file" in done.stdout + done.stderr
    assert "all valid" not in done.stdout


def damage(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(range(64))
    path.write_bytes(bytes(data))


# -- 8. the failure counter starts at zero -----------------------------------------------


def test_every_folder_has_its_failure_series_from_the_start(serve_dir, tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_iris(models / "iris", "1")
    server = serve_dir(models, *TWO)
    assert sample(metrics_text(server), "modelyard_registry_failures_total", model="iris") == 0

    write_iris(models / "broken", "1", name=7)  # fails validation: no model name
    wait_for(lambda: folder_status(server, "broken") is not None, what="the broken folder")
    wait_for(
        lambda: (
            sample(metrics_text(server), "modelyard_registry_failures_total", model="broken") == 2
        ),  # one failure per process, each counted
        what="the validation failure counted",
    )


# -- 9. client-chosen names do not make series -------------------------------------------


def test_unknown_model_names_are_counted_under_one_label(serve_dir, tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_iris(models / "iris", "1")
    server = serve_dir(models, *TWO)
    body = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 4], "data": SETOSA}]}
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    x = grpcclient.InferInput("input-0", [1, 4], "FP64")
    x.set_data_from_numpy(np.array([SETOSA]))

    def unknown_calls(name: str) -> None:
        r = requests.post(f"{server.base}/v2/models/{name}/infer", json=body, timeout=10)
        assert r.status_code == 404
        assert requests.get(f"{server.base}/v2/models/{name}/ready", timeout=10).status_code == 404
        with pytest.raises(InferenceServerException):
            grpc.infer(name, [x])
        with pytest.raises(InferenceServerException):
            grpc.infer("iris", [x], model_version=name)

    # The first unknown name makes the series that every other one then adds to.
    unknown_calls("no-such-model")
    before = metrics_text(server).splitlines()
    for _ in range(100):
        unknown_calls(uuid.uuid4().hex)
    text = metrics_text(server)
    assert len(text.splitlines()) == len(before), set(text.splitlines()) - set(before)
    assert sample(text, "model_infer_request_failure_total", model="_unknown", version="") == 303


# -- inference in worker processes -------------------------------------------------------


def test_inference_workers_answer_through_the_same_data_plane(serve_dir, tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_iris(models / "iris", "1")
    server = serve_dir(models, "--processes", "1", "--workers", "1")
    assert server.proc is not None
    children = subprocess.run(
        ["pgrep", "-a", "-P", str(server.proc.pid)], capture_output=True, text=True
    ).stdout.splitlines()
    assert sum("multiprocessing" in c for c in children) >= 1, children  # the worker
    assert iris_version(server) == "1"
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    x = grpcclient.InferInput("input-0", [2, 4], "FP64")
    x.set_data_from_numpy(np.array([SETOSA, [6.7, 3.0, 5.2, 2.3]]))
    assert grpc.infer("iris", [x]).as_numpy("predict").ravel().tolist() == [0, 2]
    wrong = grpcclient.InferInput("input-0", [1, 3], "FP64")
    wrong.set_data_from_numpy(np.array([SETOSA[:3]]))
    with pytest.raises(InferenceServerException) as info:
        grpc.infer("iris", [wrong])
    assert "INVALID_ARGUMENT" in str(info.value.status())
