"""Large requests beside small ones on a real `modelyard serve` of the iris example: the
small calls of a process are answered while it has large JSON bodies in flight, a large
body that is not a good request is refused as a small one is, and requests beyond the
process's budget of bytes in flight (--max-inflight-mb) are refused with 429 /
RESOURCE_EXHAUSTED, REST and gRPC (through the Go front end and Python's server)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.serving.test_live_registry import SETOSA
from tests.support.server import ServerProcess, copy_model, running

IRIS = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 4], "data": SETOSA}]}
BIG_MIB = 24
# Two of the large bodies (26.4 MiB each) fit, a third does not.
INFLIGHT_MB = 64
# Small calls answer in milliseconds; before large bodies left the event loop they
# waited 1-2 s behind two of them, every one of 14.
SMALL_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One process: every call, large or small, reaches the same event loop."""
    root = tmp_path_factory.mktemp("heavy")
    copy_model("iris", root / "models")
    args = ("--processes", "1", "--no-watch", "--max-inflight-mb", str(INFLIGHT_MB))
    with running(ServerProcess(root / "models", root / "serve.log", extra_args=args)) as s:
        yield s


@pytest.fixture(scope="module")
def python_grpc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The same, with Python's gRPC server on the gRPC port instead of the Go front end."""
    root = tmp_path_factory.mktemp("heavy-python-grpc")
    copy_model("iris", root / "models")
    args = ("--processes", "1", "--no-watch", "--max-inflight-mb", str(INFLIGHT_MB))
    env = {"MODELYARD_GRPC_FRONT": "off"}
    with running(ServerProcess(root / "models", root / "serve.log", args, env)) as s:
        yield s


def big_body(rows: int | None = None, value: object = None) -> tuple[bytes, int]:
    """A JSON body of about `BIG_MIB` MiB of iris rows (and its row count); ``value``
    replaces the first number."""
    row = json.dumps(SETOSA)
    rows = rows or BIG_MIB * 1024 * 1024 // (len(row) + 1)
    first = json.dumps([value, *SETOSA[1:]]) if value is not None else row
    data = "[" + ",".join([first] + [row] * (rows - 1)) + "]"
    head = json.dumps({"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [rows, 4]}]})
    return (head[:-3] + ', "data": ' + data + "}]}").encode(), rows


def post(server: ServerProcess, body: bytes, timeout: float) -> requests.Response:
    return requests.post(
        f"{server.base}/v2/models/iris/infer",
        data=body,
        headers={"content-type": "application/json"},
        timeout=timeout,
    )


def test_small_calls_are_answered_while_large_bodies_are_in_flight(
    server: ServerProcess,
) -> None:
    body, rows = big_body()
    assert len(body) >= BIG_MIB * 1024 * 1024
    post(server, body, 120).raise_for_status()  # the decoding process is up

    def small(index: int) -> tuple[int | str, list[int] | None]:
        time.sleep(0.2 + index * 0.1)  # spread over the large calls' time
        try:
            r = requests.post(
                f"{server.base}/v2/models/iris/infer", json=IRIS, timeout=SMALL_TIMEOUT_S
            )
        except requests.Timeout:
            return "timed out", None
        return r.status_code, r.json()["outputs"][0]["data"] if r.ok else None

    with ThreadPoolExecutor(16) as pool:
        large = [pool.submit(post, server, body, 120) for _ in range(2)]
        smalls = [pool.submit(small, i) for i in range(14)]
        answers = [f.result() for f in smalls]
        larges = [f.result() for f in large]
    assert answers == [(200, [0])] * 14
    for r in larges:
        assert r.status_code == 200, r.text
        (output,) = r.json()["outputs"]
        assert output["shape"][0] == rows
        assert output["data"][:3] == [0, 0, 0]


def test_large_bodies_that_are_no_good_request_are_refused_as_small_ones(
    server: ServerProcess,
) -> None:
    body, _ = big_body(rows=200_000)
    assert len(body) > 4 * 1024 * 1024
    broken = post(server, body[:-5], 60)
    assert broken.status_code == 400
    assert broken.json()["error"].startswith("request body is not valid JSON")
    # Checked in the decoding process, then refused by the data plane in its own order.
    text, _ = big_body(rows=200_000, value="5.1")
    wrong = post(server, text, 60)
    assert wrong.status_code == 400
    assert "input-0" in wrong.json()["error"]
    assert "str" in wrong.json()["error"] or "string" in wrong.json()["error"]
    no_inputs = post(server, b'{"inputs": [], "pad": "' + b"x" * (2 * 1024 * 1024) + b'"}', 60)
    assert no_inputs.status_code == 400
    assert "no inputs" in no_inputs.json()["error"]
    # Still serving.
    assert requests.post(f"{server.base}/v2/models/iris/infer", json=IRIS, timeout=30).ok


def test_requests_beyond_the_processs_budget_get_429_with_retry_after(
    server: ServerProcess,
) -> None:
    body, _ = big_body()
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda _: post(server, body, 120), range(3)))
    assert sorted(r.status_code for r in answers) == [200, 200, 429]
    (refused,) = [r for r in answers if r.status_code == 429]
    assert refused.headers["retry-after"] == "1"
    message = refused.json()["error"]
    assert f"over its budget of {INFLIGHT_MB} MB" in message
    assert "--max-inflight-mb" in message
    # Given back once answered: the next ones are taken.
    assert post(server, body, 120).status_code == 200
    assert requests.post(f"{server.base}/v2/models/iris/infer", json=IRIS, timeout=30).ok


@pytest.mark.parametrize("front", ["go", "python"])
def test_grpc_calls_beyond_the_budget_get_resource_exhausted(
    request: pytest.FixtureRequest, front: str
) -> None:
    """One budget for both ports: with two large REST bodies in flight, a large gRPC
    call does not fit, and a small one does."""
    served: ServerProcess = request.getfixturevalue("server" if front == "go" else "python_grpc")
    body, _ = big_body()
    client = grpcclient.InferenceServerClient(served.grpc_url)

    def call(rows: int) -> None:
        data = np.tile(np.array([SETOSA]), (rows, 1))
        tensor = grpcclient.InferInput("input-0", list(data.shape), "FP64")
        tensor.set_data_from_numpy(data)
        client.infer("iris", [tensor], client_timeout=60)

    with ThreadPoolExecutor(2) as pool:
        large = [pool.submit(post, served, body, 120) for _ in range(2)]
        time.sleep(0.5)  # both taken (at their headers); each is in flight for seconds
        with pytest.raises(InferenceServerException) as refused:
            call(16 * 1024 * 1024 // 32)  # 16 MiB of FP64 rows
        call(1)
        assert [f.result().status_code for f in large] == [200, 200]
    assert refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert "--max-inflight-mb" in refused.value.message()
    call(16 * 1024 * 1024 // 32)  # taken once they are answered
