"""The gRPC port served by the Go front end: the same answers as MLServer's gRPC server."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc.dataplane_pb2_grpc import GRPCInferenceServiceStub

from tests.quality.served import scrape
from tests.serving.test_live_registry import SETOSA, wait_for, write_iris
from tests.support.server import ServerProcess

THROUGH_FRONT = "through"  # the log line: "gRPC on HOST:PORT through .../modelyard-grpc-front"


def infer_request(model: str = "iris", datatype: str = "FP64") -> pb.ModelInferRequest:
    x = np.array([SETOSA], dtype=np.float64 if datatype == "FP64" else np.float32)
    return pb.ModelInferRequest(
        model_name=model,
        id="call-1",
        inputs=[
            pb.ModelInferRequest.InferInputTensor(name="input-0", datatype=datatype, shape=[1, 4])
        ],
        raw_input_contents=[x.tobytes()],
    )


def outcome(stub: GRPCInferenceServiceStub, request: pb.ModelInferRequest) -> tuple:
    """What a client sees of one call: code, message, response, trailing metadata keys."""
    try:
        response, call = stub.ModelInfer.with_call(request, metadata=[("x-tag", "t1")])
    except grpc.RpcError as e:
        return e.code(), e.details(), None, sorted(k for k, _ in e.trailing_metadata())
    return call.code(), call.details(), response, sorted(k for k, _ in call.trailing_metadata())


def model_infer_handled(server: ServerProcess) -> dict[str, float]:
    """grpc_server_handled_total of ModelInfer, by code."""
    counts: dict[str, float] = {}
    for (name, labels), value in scrape(server).items():
        tags = dict(labels)
        if name == "grpc_server_handled_total" and tags["grpc_method"] == "ModelInfer":
            counts[tags["grpc_code"]] = counts.get(tags["grpc_code"], 0.0) + value
    return counts


def front_pids(server: ServerProcess) -> list[int]:
    listen = f"127.0.0.1:{server.grpc_port}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(b"modelyard-grpc-front") and listen in argv:
            pids.append(int(entry.name))
    return pids


def test_front_answers_as_mlservers_grpc_server_does(serve_dir, tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_iris(models / "iris", "1")
    front = serve_dir(models, "--no-watch")
    python = serve_dir(models, "--no-watch", MODELYARD_GRPC_FRONT="off")
    assert THROUGH_FRONT in front.log() and front_pids(front)
    assert THROUGH_FRONT not in python.log() and not front_pids(python)

    stubs = [GRPCInferenceServiceStub(grpc.insecure_channel(s.grpc_url)) for s in (front, python)]
    cases = {
        "answered": infer_request(),
        "wrong datatype": infer_request(datatype="FP32"),
        "unknown model": infer_request(model="nope"),
    }
    for case, request in cases.items():
        via_front, via_python = (outcome(stub, request) for stub in stubs)
        assert via_front == via_python, case
    code, _, response, trailing = outcome(stubs[0], cases["answered"])
    assert code == grpc.StatusCode.OK and response.outputs[0].name == "predict"
    assert np.frombuffer(response.raw_output_contents[0], np.int64).tolist() == [0]
    assert "ce-id" in trailing  # MLServer's CloudEvents headers, as trailing metadata
    assert outcome(stubs[0], cases["wrong datatype"])[0] == grpc.StatusCode.INVALID_ARGUMENT

    # Every other method goes through to MLServer's servicers, unchanged.
    assert stubs[0].ServerReady(pb.ServerReadyRequest()).ready
    meta = [stub.ModelMetadata(pb.ModelMetadataRequest(name="iris")) for stub in stubs]
    assert meta[0] == meta[1] and meta[0].inputs[0].name == "input-0"
    assert stubs[0].ServerMetadata(pb.ServerMetadataRequest()).name == "modelyard"

    # Each ModelInfer is counted once, as MLServer's interceptor counts it.
    assert model_infer_handled(front) == {"OK": 2.0, "INVALID_ARGUMENT": 2.0, "NOT_FOUND": 1.0}


def test_front_refuses_garbage_and_keeps_serving(serve_dir, tmp_path: Path) -> None:
    write_iris(tmp_path / "models" / "iris", "1")
    server = serve_dir(tmp_path / "models", "--no-watch", "--processes", "1")
    channel = grpc.insecure_channel(server.grpc_url)
    raw = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    with pytest.raises(grpc.RpcError) as info:
        raw(b"\xff\xff\xff not protobuf")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ModelInferRequest" in info.value.details()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    x = grpcclient.InferInput("input-0", [1, 4], "FP64")
    x.set_data_from_numpy(np.array([SETOSA]))
    assert client.infer("iris", [x]).as_numpy("predict").ravel().tolist() == [0]


def hold_port(port: int, timeout: float = 10.0) -> socket.socket:
    """Bind ``port`` as soon as its listeners have gone, without SO_REUSEPORT."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket()
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)
            continue
        sock.listen()
        return sock


def http_ready(server: ServerProcess, path: str = "/v2/health/ready") -> bool:
    return requests.get(server.base + path, timeout=5).status_code == 200


def test_front_that_dies_is_restarted_and_readiness_waits_for_it(serve_dir, tmp_path: Path) -> None:
    write_iris(tmp_path / "models" / "iris", "1")
    server = serve_dir(tmp_path / "models", "--no-watch")
    # Ready means the gRPC port takes calls in both processes, not only HTTP's.
    listens = f"gRPC on 127.0.0.1:{server.grpc_port} {THROUGH_FRONT}"
    assert server.log().count(listens) == 2
    before = front_pids(server)
    assert len(before) == 2  # one per server process
    for pid in before:
        os.kill(pid, signal.SIGKILL)
    # With the port taken meanwhile, the new front ends cannot listen: not ready.
    taken = hold_port(server.grpc_port)
    try:
        wait_for(lambda: not http_ready(server), what="readiness to drop")
        wait_for(lambda: f"is 127.0.0.1:{server.grpc_port} free?" in server.log(), what="why")
        assert not server.status()["ready"]
        # A pod's readiness probe too: its model answers over HTTP, but gRPC is down.
        assert not http_ready(server, "/v2/models/iris/ready")
    finally:
        taken.close()
    wait_for(lambda: http_ready(server), what="readiness once the port is free")
    assert http_ready(server, "/v2/models/iris/ready")
    assert server.log().count(listens) == 4
    assert set(front_pids(server)).isdisjoint(before) and len(front_pids(server)) == 2
    assert grpcclient.InferenceServerClient(server.grpc_url).is_server_ready()
    assert server.log().count("the gRPC front end exited with code -9; restarting it") == 2
