"""One message-size limit for REST and gRPC: a 50 MB request works when allowed and is
refused with a clear 413 / RESOURCE_EXHAUSTED when not."""

from __future__ import annotations

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.support.server import ServerProcess, copy_model

ROWS = 50 * 1024 * 1024 // (4 * 8)  # 50 MB of FP64 iris rows


@pytest.fixture(scope="module")
def big_batch() -> np.ndarray:
    from sklearn.datasets import load_iris

    return np.resize(load_iris().data.astype(np.float64), (ROWS, 4))


def grpc_infer(server: ServerProcess, x: np.ndarray) -> np.ndarray:
    limit = 256 * 1024 * 1024
    client = grpcclient.InferenceServerClient(
        server.grpc_url,
        channel_args=[("grpc.max_send_message_length", limit),
                      ("grpc.max_receive_message_length", limit)],
    )  # fmt: skip
    inp = grpcclient.InferInput("input-0", list(x.shape), "FP64")
    inp.set_data_from_numpy(x)
    return client.infer("iris", [inp], client_timeout=120).as_numpy("predict")


def rest_infer(server: ServerProcess, body: bytes) -> requests.Response:
    return requests.post(
        f"{server.base}/v2/models/iris/infer",
        data=body,
        headers={"Content-Type": "application/json"},
        timeout=300,
    )


def rest_body(x: np.ndarray) -> bytes:
    import orjson

    return orjson.dumps(
        {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": list(x.shape),
                     "data": x.ravel()}]},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )  # fmt: skip


def test_50mb_request_works_over_both_protocols(serve_dir, tmp_path, big_batch) -> None:
    copy_model("iris", tmp_path / "models")
    server = serve_dir(tmp_path / "models", "--no-watch")
    predicted = grpc_infer(server, big_batch).ravel()
    assert predicted.shape == (ROWS,)
    assert predicted[:3].tolist() == [0, 0, 0]  # the first iris rows are setosa

    # JSON spells each iris number in about 4 bytes: twice the rows make 50 MB of text.
    rows = np.resize(big_batch, (ROWS * 2, 4))
    body = rest_body(rows)
    assert len(body) > 50 * 1024 * 1024
    r = rest_infer(server, body)
    assert r.status_code == 200, r.text[:500]
    assert r.json()["outputs"][0]["shape"] == [ROWS * 2, 1]


def test_over_the_limit_is_refused_clearly(serve_dir, tmp_path, big_batch) -> None:
    copy_model("iris", tmp_path / "models")
    server = serve_dir(tmp_path / "models", "--no-watch", "--max-message-mb", "8")
    with pytest.raises(InferenceServerException) as info:
        grpc_infer(server, big_batch)
    assert info.value.status() == "StatusCode.RESOURCE_EXHAUSTED", info.value

    r = rest_infer(server, rest_body(big_batch[:800_000]))
    assert r.status_code == 413
    assert "--max-message-mb" in r.json()["error"]

    # Under the limit still works on both, after the refusals.
    assert grpc_infer(server, big_batch[:10]).ravel()[0] == 0
    assert rest_infer(server, rest_body(big_batch[:10])).status_code == 200
