"""The live registry: folders dropped, changed, broken, fixed and removed while serving."""

from __future__ import annotations

import itertools
import json
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.support.server import REPO, ServerProcess

SETOSA = [5.1, 3.5, 1.4, 0.2]

SLOW_MODEL = """
import asyncio
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceResponse


class SlowModel(MLModel):
    async def load(self) -> bool:
        await asyncio.sleep(float(self.settings.parameters.extra.get("delay", 0)))
        if self.settings.parameters.extra.get("fail"):
            raise RuntimeError("weights are corrupt: checksum of layer 3 is wrong")
        return True

    async def predict(self, payload):
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output("version", __import__("numpy").array([1]))],
        )
"""


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


def folder_status(server: ServerProcess, name: str) -> dict | None:
    for model in server.status()["models"]:
        if Path(model["folder"]).name == name:
            return model
    return None


def iris_version(server: ServerProcess) -> str | None:
    """The version answering an iris request, or None when it does not answer."""
    body = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 4], "data": SETOSA}]}
    r = requests.post(f"{server.base}/v2/models/iris/infer", json=body, timeout=5)
    if r.status_code != 200:
        return None
    assert r.json()["outputs"][0]["data"] == [0]
    return r.json()["model_version"]


def write_iris(folder: Path, version: str, artifact: bool = True, **changes: object) -> None:
    """An iris folder as plain MLServer settings, with its artifact unless told not to."""
    folder.mkdir(parents=True, exist_ok=True)
    if artifact and not (folder / "model.joblib").exists():
        shutil.copy(REPO / "model-settings/iris/model.joblib", folder / "model.joblib")
    settings = {
        "name": "iris",
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": version},
        "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}],
        **changes,
    }
    # Written elsewhere then renamed, as a deploy tool would: the swap test must
    # not depend on the debounce of half-written files.
    tmp = folder / ".model-settings.json.tmp"
    tmp.write_text(json.dumps(settings))
    tmp.replace(folder / "model-settings.json")


def write_slow(folder: Path, delay: float = 0.0, fail: bool = False, name: str = "slow") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "slowmodel.py").write_text(SLOW_MODEL)
    (folder / "model-settings.json").write_text(
        json.dumps(
            {
                "name": name,
                "implementation": "slowmodel.SlowModel",
                "parameters": {"version": "1", "extra": {"delay": delay, "fail": fail}},
            }
        )
    )


def test_drop_change_break_fix_delete(serve_dir, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    # One process, so each state is read from the process that reached it; several
    # processes converge on their own (tests/serving/test_processes.py).
    server = serve_dir(models, "--processes", "1")
    assert iris_version(server) is None

    # Drop: a folder copied in (files landing one by one) is loaded.
    staged = tmp_path / "staged"
    write_iris(staged, "1")
    shutil.copytree(staged, models / "iris")
    wait_for(lambda: iris_version(server) == "1", what="iris v1 to answer")
    assert folder_status(server, "iris")["state"] == "ready"

    # Change: a new version is swapped in.
    write_iris(models / "iris", "2")
    wait_for(lambda: iris_version(server) == "2", what="iris v2 to answer")

    def broken(fragment: str) -> Callable[[], bool]:
        def check() -> bool:
            status = folder_status(server, "iris")
            return status["state"] == "failed" and fragment in (status["error"] or "")

        return check

    # Each breakage is reported in the status while version 2 keeps answering.
    (models / "iris/model-settings.json").write_text('{"name": "iris", "implementation": ')
    wait_for(broken("not valid JSON"), what="bad JSON reported")
    assert iris_version(server) == "2"
    assert folder_status(server, "iris")["serving_version"] == "2"

    write_iris(models / "iris", "3", implementation=42)
    wait_for(broken("implementation"), what="schema error reported")
    assert iris_version(server) == "2"

    (models / "iris/model.joblib").unlink()
    write_iris(models / "iris", "3", artifact=False)
    wait_for(broken("failed to load"), what="missing artifact reported")
    assert iris_version(server) == "2"

    (models / "iris/model.joblib").write_bytes(b"this is not a pickle")
    wait_for(broken("failed to load"), what="unloadable artifact reported")
    assert iris_version(server) == "2"

    # Fix: the folder serves again, with the new version.
    shutil.copy(REPO / "model-settings/iris/model.joblib", models / "iris/model.joblib")
    write_iris(models / "iris", "4")
    wait_for(lambda: iris_version(server) == "4", what="iris v4 after the fix")
    status = folder_status(server, "iris")
    assert status["state"] == "ready" and status["error"] is None

    # Delete: the model is unloaded and its folder leaves the status.
    shutil.rmtree(models / "iris")
    wait_for(lambda: iris_version(server) is None, what="iris unloaded")
    assert folder_status(server, "iris") is None
    with pytest.raises(InferenceServerException) as info:
        grpcclient.InferenceServerClient(server.grpc_url).get_model_metadata("iris")
    assert "NOT_FOUND" in str(info.value.status())


def test_half_written_file_is_retried_not_reported(serve_dir, tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_iris(models / "iris", "1")
    server = serve_dir(models, "--processes", "1")
    assert iris_version(server) == "1"

    settings_path = models / "iris/model-settings.json"
    complete = json.loads(settings_path.read_text())
    complete["parameters"]["version"] = "2"
    text = json.dumps(complete)
    # An editor that writes the file in two goes, 0.4 s apart.
    settings_path.write_text(text[: len(text) // 2])
    time.sleep(0.4)
    seen: list[str] = []
    stop = threading.Event()

    def watch_states() -> None:
        while not stop.is_set():
            seen.append(folder_status(server, "iris")["state"])
            time.sleep(0.02)

    watcher = threading.Thread(target=watch_states)
    watcher.start()
    try:
        settings_path.write_text(text)
        wait_for(lambda: iris_version(server) == "2", what="iris v2")
    finally:
        stop.set()
        watcher.join()
    assert "failed" not in seen


def test_a_failing_folder_never_touches_the_others(serve_dir, tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_iris(models / "iris", "1")
    write_slow(models / "broken", fail=True, name="broken")
    server = serve_dir(models)
    assert iris_version(server) == "1"
    status = folder_status(server, "broken")
    assert status["state"] == "failed"
    assert "weights are corrupt" in status["error"]
    # The failed folder does not hold readiness back, and says why it is not ready.
    client = httpclient.InferenceServerClient(server.http_url)
    assert client.is_server_ready()
    assert not client.is_model_ready("broken")


# A model's code that notes when, and on which thread, its import ran (a third of a second).
NOTED_IMPORT = """
import json, os, threading, time
_began = time.monotonic()
time.sleep(0.3)
with open({log!r}, "a") as _log:
    _noted = [{name!r}, os.getpid(), threading.current_thread().name, _began, time.monotonic()]
    _log.write(json.dumps(_noted))
    _log.write("\\n")
"""

NOTED_PREDICTOR = """
import numpy as np


class Scorer:
    def predict(self, instances):
        return np.asarray(instances, dtype=np.float64).sum(axis=1, keepdims=True)
"""

NOTED_MODEL = """
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceResponse
import numpy as np


class NotedModel(MLModel):
    async def load(self) -> bool:
        return True

    async def predict(self, payload):
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output("score", np.array([[1.0]]))],
        )
"""


def test_model_folders_import_their_code_one_thread_at_a_time(serve_dir, tmp_path: Path) -> None:
    # Imports on two threads at once can hand each other half-initialised modules: a
    # server loading an XGBoost folder (on the event loop) beside a predictor folder (on
    # a thread) once failed with "ImportError: sklearn needs to be installed".
    models, log = tmp_path / "models", tmp_path / "imports.jsonl"
    for name in ("alpha", "beta"):
        folder = models / name
        folder.mkdir(parents=True)
        code = NOTED_IMPORT.format(log=str(log), name=name) + NOTED_PREDICTOR
        (folder / "predictor.py").write_text(code)
        (folder / "model.yaml").write_text(
            f"name: {name}\nversion: '1'\nruntime: predictor\npredictor: predictor.py:Scorer\n"
            "model: {uri: predictor.py}\n"
            "inputs:\n  - {name: input-0, datatype: FP64, shape: [-1, 4]}\n"
            "outputs:\n  - {name: score, datatype: FP64, shape: [-1, 1]}\n"
        )
    folder = models / "gamma"  # an MLModel of its own, imported on the event loop
    folder.mkdir()
    (folder / "notedmodel.py").write_text(
        NOTED_IMPORT.format(log=str(log), name="gamma") + NOTED_MODEL
    )
    (folder / "model-settings.json").write_text(
        json.dumps({"name": "gamma", "implementation": "notedmodel.NotedModel"})
    )
    server = serve_dir(models)
    body = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 4], "data": SETOSA}]}
    for name in ("alpha", "beta", "gamma"):
        r = requests.post(f"{server.base}/v2/models/{name}/infer", json=body, timeout=10)
        assert r.status_code == 200, r.text

    noted = [json.loads(line) for line in log.read_text().splitlines()]
    for pid in {pid for _, pid, *_ in noted}:  # each server process on its own
        imports = sorted((n for n in noted if n[1] == pid), key=lambda n: n[3])
        assert {name for name, *_ in imports} == {"alpha", "beta", "gamma"}
        assert len({thread for _, _, thread, *_ in imports}) > 1  # the loop and threads
        for before, after in itertools.pairwise(imports):
            assert after[3] >= before[4], f"{before} and {after} imported at the same time"


def test_readiness_waits_for_every_valid_model(serve_dir, tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_iris(models / "iris", "1")
    write_slow(models / "slow", delay=4.0)
    write_iris(models / "invalid", "1", name=7)
    server = serve_dir(models, ready=False)
    server.wait_ready(path="/v2/health/live")
    client = httpclient.InferenceServerClient(server.http_url)
    grpc = grpcclient.InferenceServerClient(server.grpc_url)

    wait_for(lambda: iris_version(server) == "1", what="iris to answer")
    # iris answers, but the slow model is still loading: not ready, over both protocols.
    assert folder_status(server, "slow")["state"] == "loading"
    assert not client.is_server_ready()
    assert not grpc.is_server_ready()
    assert requests.get(f"{server.base}/v2/health/ready", timeout=5).status_code != 200

    wait_for(client.is_server_ready, timeout=30, what="ready once slow has loaded")
    assert grpc.is_server_ready()
    assert client.is_model_ready("slow")
    # The invalid folder never becomes a model and does not hold readiness back.
    assert folder_status(server, "invalid")["state"] == "failed"


def test_swap_under_load_fails_no_request(serve_dir, tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_iris(models / "iris", "1")
    server = serve_dir(models)
    x = np.array([SETOSA], dtype=np.float64)
    sent = failed = 0
    errors: list[str] = []
    versions: set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def hammer(protocol: str) -> None:
        nonlocal sent, failed
        if protocol == "http":
            client = httpclient.InferenceServerClient(server.http_url)
            inp = httpclient.InferInput("input-0", [1, 4], "FP64")
            inp.set_data_from_numpy(x, binary_data=False)
        else:
            client = grpcclient.InferenceServerClient(server.grpc_url)
            inp = grpcclient.InferInput("input-0", [1, 4], "FP64")
            inp.set_data_from_numpy(x)
        while not stop.is_set():
            try:
                result = client.infer("iris", [inp])
                ok = result.as_numpy("predict").ravel().tolist() == [0]
                version = result.get_response()
                version = (
                    version["model_version"] if isinstance(version, dict) else version.model_version
                )
                err = None if ok else "wrong answer"
            except InferenceServerException as e:
                ok, err, version = False, str(e), None
            with lock:
                sent += 1
                if version:
                    versions.add(version)
                if not ok:
                    failed += 1
                    errors.append(err or "")

    threads = [threading.Thread(target=hammer, args=(p,)) for p in ("http", "grpc") * 2]
    for t in threads:
        t.start()
    try:
        for v in range(2, 8):
            write_iris(models / "iris", str(v))
            wait_for(lambda v=v: folder_status(server, "iris")["serving_version"] == str(v))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert sent > 100
    assert failed == 0, errors[:5]
    assert {"1", "7"} <= versions


def test_status_command_lists_states(serve_dir, tmp_path: Path) -> None:
    import subprocess
    import sys

    models = tmp_path / "models"
    write_iris(models / "iris", "1")
    write_slow(models / "broken", fail=True, name="broken")
    server = serve_dir(models)
    modelyard = str(Path(sys.executable).parent / "modelyard")
    out = subprocess.run(
        [modelyard, "status", "--url", server.base], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 1, out.stderr
    assert "iris" in out.stdout and "ready" in out.stdout
    assert "broken" in out.stdout and "failed" in out.stdout
    assert "weights are corrupt" in out.stdout
    raw = subprocess.run(
        [modelyard, "status", "--url", server.base, "--json"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    states = {m["name"]: m["state"] for m in json.loads(raw.stdout)["models"]}
    assert states == {"iris": "ready", "broken": "failed"}


WARMED_IRIS = """
name: iris
version: "{version}"
runtime: sklearn
model: {{uri: model.joblib}}
example:
  inputs:
    - {{name: input-0, datatype: FP64, shape: [1, {n}], data: {data}}}
"""


def test_warm_up_failure_keeps_the_serving_version(serve_dir, tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "iris").mkdir(parents=True)
    shutil.copy(REPO / "model-settings/iris/model.joblib", models / "iris")
    declaration = models / "iris/model.yaml"
    declaration.write_text(WARMED_IRIS.format(version=1, n=4, data=SETOSA))
    server = serve_dir(models, "--processes", "1")
    assert iris_version(server) == "1"

    # No signature is declared, so only the warm-up request can show that version 2
    # fails on the example (three measurements, not four): it never takes traffic.
    declaration.write_text(WARMED_IRIS.format(version=2, n=3, data=SETOSA[:3]))
    wait_for(lambda: folder_status(server, "iris")["state"] == "failed", what="warm-up failure")
    assert "failed to load" in folder_status(server, "iris")["error"]
    assert iris_version(server) == "1"

    declaration.write_text(WARMED_IRIS.format(version=2, n=4, data=SETOSA))
    wait_for(lambda: iris_version(server) == "2", what="version 2 after a good example")


def test_repository_api_sees_declarations(serve_dir, tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(REPO / "model-settings/iris", models / "iris")  # a model.yaml folder
    write_iris(models / "plain", "1", name="plain")
    server = serve_dir(models, "--processes", "1", MODELYARD_ADMIN_TOKEN="registry-admin")
    admin = {"Authorization": "Bearer registry-admin"}
    index = requests.post(
        f"{server.base}/v2/repository/index", json={}, headers=admin, timeout=5
    ).json()
    assert {(m["name"], m["state"]) for m in index} == {("iris", "READY"), ("plain", "READY")}
    # Reloading through MLServer's own API swaps safely too.
    r = requests.post(f"{server.base}/v2/repository/models/iris/load", headers=admin, timeout=30)
    assert r.status_code == 200, r.text
    assert iris_version(server) == "1"


def test_artifact_uri_placeholders_are_expanded(serve_dir, tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_iris(models / "iris", "1")
    settings = json.loads((models / "iris/model-settings.json").read_text())
    settings["parameters"]["uri"] = "${IRIS_ARTIFACT:-./missing.joblib}"
    (models / "iris/model-settings.json").write_text(json.dumps(settings))
    server = serve_dir(models, "--processes", "1", IRIS_ARTIFACT="./model.joblib")
    assert iris_version(server) == "1"


def test_settling_the_heap_frees_what_was_frozen_and_then_dropped() -> None:
    """Models loaded are frozen out of full collections; once one is unloaded, the next
    settle collects it (cycles included) instead of keeping it frozen for good."""
    import gc
    import weakref

    from modelyard.serving.registry import settle_heap

    class Model:
        pass

    model = Model()
    model.me = model  # type: ignore[attr-defined]  # a cycle: only a collection frees it
    alive = weakref.ref(model)
    try:
        settle_heap()
        assert gc.get_freeze_count() > 0
        del model
        gc.collect()
        assert alive() is not None  # frozen: full collections leave it alone
        settle_heap()  # as after an unload
        assert alive() is None
    finally:
        gc.unfreeze()
