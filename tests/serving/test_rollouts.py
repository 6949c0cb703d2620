"""Rollouts against a real `modelyard serve` of two processes: a new version of a
folder declaring `rollout` is loaded as a candidate beside the serving one, compared
(shadow) or given a share of the calls (canary), then promoted or aborted."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import yaml

from tests.serving.test_live_registry import wait_for
from tests.support.declarations import run_cli
from tests.support.server import REPO, ServerProcess, copy_model, running

TOKEN = "rollout-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}

# Answers x itself; every `shift_every`-th integer input (0, n, 2n...) answered x + 1.
ECHO_PY = """\
import numpy as np


class Echo:
    def __init__(self, shift_every=0, fail=False):
        self.shift_every = shift_every
        self.fail = fail

    def load(self, artifacts_dir):
        if self.fail:
            raise RuntimeError("weights are corrupt")

    def preprocess(self, inputs):
        return np.asarray(inputs, dtype=np.float64)

    def predict(self, x):
        y = x[:, :1].copy()
        if self.shift_every:
            y[x[:, 0].astype(np.int64) % self.shift_every == 0] += 1.0
        return y

    def postprocess(self, predictions):
        return {"y": predictions}
"""


def declaration(name: str, version: str, rollout: dict[str, Any], **parameters: Any) -> dict:
    monitoring = {"monitoring": MONITORED[name]} if name in MONITORED else {}
    return {
        **monitoring,
        "name": name,
        "version": version,
        "runtime": "predictor",
        "predictor": "echo.py:Echo",
        "model": {"uri": "model.bin", "parameters": parameters},
        "inputs": [{"name": "x", "datatype": "FP64", "shape": [-1, 1]}],
        "outputs": [{"name": "y", "datatype": "FP64", "shape": [-1, 1]}],
        "rollout": rollout,
        "example": {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 1], "data": [1]}]},
    }


def write(folder: Path, decl: dict) -> None:
    """The folder's files, its declaration replaced in one step (one new version seen
    once: a candidate loaded again starts its comparison again)."""
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "echo.py").exists():
        (folder / "echo.py").write_text(ECHO_PY)
        (folder / "model.bin").write_bytes(b"weights\n")
    tmp = folder.parent / f".{folder.name}.yaml"
    tmp.write_text(yaml.safe_dump(decl, sort_keys=False))
    tmp.replace(folder / "model.yaml")


SHADOW = {"mode": "shadow"}
CANARY = {"mode": "canary", "weight": 20}
MODELS: dict[str, dict[str, Any]] = {
    "same": SHADOW,
    "differs": SHADOW,
    "canary": CANARY,
    "sticky": {**CANARY, "sticky_by": {"header": "x-user"}},
    "sticky-input": {**CANARY, "sticky_by": {"input": "x"}},
    "broken": SHADOW,
    "auto-promote": {**SHADOW, "promote_when": {"min_requests": 50, "min_agreement": 0.99}},
    "auto-abort": {**SHADOW, "abort_when": {"min_requests": 50, "agreement_below": 0.9}},
    "labelled": SHADOW,
}
# A classifier whose labels arrive through the feedback path.
MONITORED = {"labelled": {"task": "classification", "prediction": "y"}}
# The candidate's parameters: "differs" and "auto-abort" disagree on every 4th input.
CANDIDATES: dict[str, dict[str, Any]] = {
    "differs": {"shift_every": 4},
    "auto-abort": {"shift_every": 4},
    "broken": {"fail": True},
    "labelled": {"shift_every": 4},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("rollouts")
    models = root / "models"
    for name, rollout in MODELS.items():
        write(models / name, declaration(name, "1", rollout))
    proc = ServerProcess(
        models, root / "server.log", ["--processes", "2"], env={"MODELYARD_ADMIN_TOKEN": TOKEN}
    )
    iris = yaml.safe_load((REPO / "model-settings/iris/model.yaml").read_text())
    copy_model("iris", models)
    with running(proc):
        for name, rollout in MODELS.items():
            write(models / name, declaration(name, "2", rollout, **CANDIDATES.get(name, {})))
        # A model predicted directly, whose gRPC calls take the lane (`lanes.py`) but for
        # the rollout.
        (models / "iris" / "model.yaml").write_text(
            yaml.safe_dump({**iris, "version": "2", "rollout": SHADOW}, sort_keys=False)
        )
        wait_for(
            lambda: {r["model"] for r in rollouts(proc)} >= set(MODELS) - {"broken"} | {"iris"},
            60,
            "every candidate loaded",
        )
        yield proc


def rollouts(server: ServerProcess) -> list[dict[str, Any]]:
    r = requests.get(f"{server.base}/modelyard/rollouts", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["rollouts"]


def rollout(server: ServerProcess, name: str) -> dict[str, Any] | None:
    return next((r for r in rollouts(server) if r["model"] == name), None)


def compared(server: ServerProcess, name: str, count: int) -> dict[str, Any]:
    """``name``'s rollout once ``count`` calls are compared: each process's numbers
    reach the others within a quarter second, so a read may show fewer before then."""
    found: dict[str, Any] = {}

    def done() -> bool:
        found.update(rollout(server, name) or {})
        return found.get("compared", 0) >= count

    wait_for(done, 30, f"{count} calls of {name} compared")
    return found


def infer(
    session: requests.Session, server: ServerProcess, name: str, x: float, **headers: str
) -> dict[str, Any]:
    body = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 1], "data": [x]}]}
    r = session.post(
        f"{server.base}/v2/models/{name}/infer", json=body, headers=headers, timeout=10
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_a_shadow_identical_to_the_incumbent_agrees_and_is_never_seen(
    server: ServerProcess,
) -> None:
    with requests.Session() as s:
        versions = {infer(s, server, "same", float(i))["model_version"] for i in range(500)}
    assert versions == {"1"}
    found = compared(server, "same", 500)
    assert (found["mode"], found["incumbent"], found["candidate"]) == ("shadow", "1", "2")
    assert found["compared"] == 500 and found["dropped"] == 0
    assert found["agreement"] == 1.0
    assert found["outputs"]["y"] == {"mean_abs": 0.0, "max_abs": 0.0}
    assert (
        found["sides"]["incumbent"]["answered"] == 500
        and found["sides"]["candidate"]["answered"] == 500
    )
    assert found["sides"]["incumbent"]["p99_ms"] > 0 and found["sides"]["candidate"]["p99_ms"] > 0
    assert found["processes"] == 2  # merged over both processes' comparisons
    # Prometheus: the agreement the first process judged, and the calls of each side.
    wait_for(
        lambda: (
            'modelyard_rollout_agreement{candidate="2",incumbent="1",model="same"} 1.0'
            in requests.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).text
        ),
        10,
        "the agreement gauge",
    )
    scrape = requests.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).text
    assert (
        'modelyard_rollout_requests_total{candidate="2",incumbent="1",model="same",'
        'side="candidate"} 500.0' in scrape
    )


def test_a_candidate_differing_on_a_known_share_shows_that_share(server: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    x = grpcclient.InferInput("x", [1, 1], "FP64")
    versions = set()
    for i in range(400):  # gRPC: the same comparison as REST
        x.set_data_from_numpy(np.array([[float(i)]]))
        result = client.infer("differs", [x])
        versions.add(result.get_response().model_version)
        assert result.as_numpy("y")[0, 0] == float(i)  # the incumbent's answer
    assert versions == {"1"}
    found = compared(server, "differs", 400)
    assert found["agreement"] == 0.75  # every 4th input of 0..399 differs
    assert found["outputs"]["y"]["max_abs"] == 1.0
    assert found["outputs"]["y"]["mean_abs"] == pytest.approx(0.25)
    status = run_cli("rollout", "status", "differs", "--url", server.base)
    assert status.returncode == 0, status.stderr
    assert "incumbent 1 -> candidate 2" in status.stdout
    assert re.search(r"compared \d+, agreement 0\.\d{4}", status.stdout), status.stdout


def test_a_model_with_a_lane_is_shadowed_over_grpc(server: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    x = grpcclient.InferInput("input-0", [1, 4], "FP64")
    x.set_data_from_numpy(np.array([[5.1, 3.5, 1.4, 0.2]]))
    for _ in range(100):
        result = client.infer("iris", [x])
        assert result.get_response().model_version == "1"
        assert result.as_numpy("predict")[0, 0] == 0
    found = compared(server, "iris", 100)
    assert found["agreement"] == 1.0 and found["outputs"]["predict"]["max_abs"] == 0.0


def test_a_canary_answers_its_weight_then_promote_serves_it_without_a_failure(
    server: ServerProcess,
) -> None:
    with requests.Session() as s:
        versions = [infer(s, server, "canary", float(i))["model_version"] for i in range(2000)]
    share = versions.count("2") / len(versions)
    assert 0.15 <= share <= 0.25, share

    def all_counted() -> bool:
        sides = (rollout(server, "canary") or {})["sides"]
        return bool(sides["candidate"]["answered"] + sides["incumbent"]["answered"] == 2000)

    wait_for(all_counted, 10, "both sides' calls counted")

    failures: list[str] = []
    answered: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with requests.Session() as s:
            body = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 1], "data": [1]}]}
            while not stop.is_set():
                r = s.post(f"{server.base}/v2/models/canary/infer", json=body, timeout=10)
                if r.status_code != 200:
                    failures.append(r.text)
                else:
                    answered.append(r.json()["model_version"])

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(answered) > 100, 30, "calls before the promote")
        promoted = run_cli(
            "rollout", "promote", "canary", "--url", server.base, "--admin-token-file", "/dev/null"
        )
        assert promoted.returncode != 0 and "401" in promoted.stderr  # a wrong token
        r = requests.post(
            f"{server.base}/modelyard/rollouts/canary/promote", headers=ADMIN, timeout=60
        )
        assert r.status_code == 200, r.text
        assert r.json()["serving"] == "2"
        before = len(answered)
        wait_for(lambda: len(answered) > before + 200, 30, "calls after the promote")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert set(answered[-100:]) == {"2"}
    assert rollout(server, "canary") is None
    with requests.Session() as s:
        assert {infer(s, server, "canary", 1.0)["model_version"] for _ in range(20)} == {"2"}


def test_a_sticky_canary_keeps_each_caller_on_one_side(server: ServerProcess) -> None:
    with requests.Session() as s:
        for user in ("u1", "u2", "u3"):
            seen = {infer(s, server, "sticky", 1.0, **{"x-user": user})["model_version"]
                    for _ in range(20)}  # fmt: skip
            assert len(seen) == 1, (user, seen)
        sides = [
            infer(s, server, "sticky", 1.0, **{"x-user": f"user-{i}"})["model_version"]
            for i in range(400)
        ]
    assert 0.12 <= sides.count("2") / len(sides) <= 0.28


def test_a_canary_sticky_by_an_input_keeps_each_entity_on_one_side(
    server: ServerProcess,
) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)  # gRPC routes alike
    x = grpcclient.InferInput("x", [1, 1], "FP64")
    sides: dict[float, set[str]] = {}
    for _ in range(3):
        for i in range(300):
            x.set_data_from_numpy(np.array([[float(i)]]))
            version = client.infer("sticky-input", [x]).get_response().model_version
            sides.setdefault(float(i), set()).add(version)
    assert all(len(seen) == 1 for seen in sides.values())
    share = sum(seen == {"2"} for seen in sides.values()) / len(sides)
    assert 0.12 <= share <= 0.28, share


def test_abort_unloads_the_candidate(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert rollout(server, "differs") is not None
    r = requests.post(f"{server.base}/modelyard/rollouts/differs/abort", timeout=60)
    assert r.status_code == 401  # the admin token's, as the repository API
    monkeypatch.setenv("MODELYARD_ADMIN_TOKEN", TOKEN)  # the CLI reads it from there
    aborted = run_cli("rollout", "abort", "differs", "--url", server.base)
    assert aborted.returncode == 0, aborted.stderr
    assert "model 'differs': aborted; version 1 serves" in aborted.stdout
    assert rollout(server, "differs") is None
    with requests.Session() as s:
        answers = [infer(s, server, "differs", 4.0) for _ in range(20)]
    assert {a["model_version"] for a in answers} == {"1"}
    assert {a["outputs"][0]["data"][0] for a in answers} == {4.0}
    again = requests.post(
        f"{server.base}/modelyard/rollouts/differs/abort", headers=ADMIN, timeout=60
    )
    assert again.status_code == 409 and "has no candidate" in again.json()["error"]


def test_labels_from_the_feedback_path_judge_both_sides(
    server: ServerProcess, tmp_path: Path
) -> None:
    with requests.Session() as s:
        ids = [infer(s, server, "labelled", float(i % 2))["id"] for i in range(200)]
    labels = tmp_path / "labels.csv"
    lines = [f"{request_id},{i % 2},2026-12-04T12:00:00Z" for i, request_id in enumerate(ids)]
    labels.write_text("request_id,label,observed_at\n" + "\n".join(lines) + "\n")
    loaded = run_cli("feedback", "load", "labelled", str(labels), "--dir", str(server.directory))
    assert loaded.returncode == 0, loaded.stderr

    found: dict[str, Any] = {}

    def judged() -> bool:
        found.update(rollout(server, "labelled") or {})
        return bool(found and found["sides"]["candidate"]["labelled"] == 200)

    wait_for(judged, 30, "the labels reaching both sides")
    incumbent, candidate = found["sides"]["incumbent"], found["sides"]["candidate"]
    # The incumbent answers x itself, the label; the candidate answers 1 for 0 and 1.
    assert (incumbent["accuracy"], incumbent["precision"], incumbent["recall"]) == (1.0, 1.0, 1.0)
    assert (candidate["accuracy"], candidate["precision"], candidate["recall"]) == (0.5, 0.25, 0.5)
    assert found["agreement"] == 0.5
    status = run_cli("rollout", "status", "labelled", "--url", server.base)
    assert "on 200 labelled: accuracy 0.5000, precision 0.2500, recall 0.5000" in status.stdout


def test_a_candidate_that_fails_to_load_leaves_the_incumbent_serving(
    server: ServerProcess,
) -> None:
    def failed() -> bool:
        for m in server.status()["models"]:
            if m["name"] == "broken":
                return m["state"] == "failed"
        return False

    wait_for(failed, 30, "the broken candidate's failure")
    model = next(m for m in server.status()["models"] if m["name"] == "broken")
    assert "weights are corrupt" in model["error"] and model["serving_version"] == "1"
    assert rollout(server, "broken") is None
    with requests.Session() as s:
        assert {infer(s, server, "broken", 1.0)["model_version"] for _ in range(20)} == {"1"}


def test_declared_rules_promote_and_abort_on_their_own(server: ServerProcess) -> None:
    with requests.Session() as s:
        for i in range(120):
            infer(s, server, "auto-promote", float(i))
            infer(s, server, "auto-abort", float(i))

    def serving(name: str) -> str | None:
        return next(m["serving_version"] for m in server.status()["models"] if m["name"] == name)

    wait_for(lambda: rollout(server, "auto-promote") is None, 30, "the automatic promote")
    wait_for(lambda: rollout(server, "auto-abort") is None, 30, "the automatic abort")
    # The rollout's end and the version serving are two reads, which either of the two
    # processes may answer: the second is given a moment to agree with the first.
    wait_for(lambda: serving("auto-promote") == "2", 5, "version 2 serving auto-promote")
    assert serving("auto-abort") == "1"
    with requests.Session() as s:
        assert {infer(s, server, "auto-promote", 1.0)["model_version"] for _ in range(20)} == {"2"}
        assert {infer(s, server, "auto-abort", 1.0)["model_version"] for _ in range(20)} == {"1"}
    log = server.log()
    assert "candidate version 2 promoted automatically: " in log
    assert "candidate version 2 aborted automatically: agreement" in log
