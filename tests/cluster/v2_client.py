"""The V2 calls of the cluster tests, made the same way on the host and inside a pod.

In a pod (the serving image has tritonclient and NumPy) it runs as
`python -c "<this file>" '<json>'` and prints one JSON line; on the host the tests import
`call`. Each request names a model, one input tensor and the outputs wanted; the answer
over REST and over gRPC comes back as {"version": ..., "outputs": {name: [...]}}.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

DTYPES = {"FP64": np.float64, "FP32": np.float32, "INT64": np.int64, "BYTES": np.object_}


def rest(url: str, request: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    body = json.dumps(
        {
            "inputs": [request["input"]],
            "outputs": [{"name": name} for name in request["outputs"]],
        }
    ).encode()
    req = urllib.request.Request(
        f"{url}/v2/models/{request['model']}/infer",
        data=body,
        headers={"Content-Type": "application/json", "Connection": "close"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as response:
        answer = json.load(response)
    return {
        "version": answer.get("model_version"),
        "outputs": {o["name"]: o["data"] for o in answer["outputs"]},
    }


def grpc(target: str, request: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    spec = request["input"]
    array = np.array(spec["data"], dtype=DTYPES[spec["datatype"]]).reshape(spec["shape"])
    if spec["datatype"] == "BYTES":
        array = np.array([str(v).encode() for v in array.flat], dtype=np.object_).reshape(
            spec["shape"]
        )
    tensor = grpcclient.InferInput(spec["name"], list(spec["shape"]), spec["datatype"])
    tensor.set_data_from_numpy(array)
    outputs = [grpcclient.InferRequestedOutput(name) for name in request["outputs"]]
    client = grpcclient.InferenceServerClient(target)
    try:
        result = client.infer(request["model"], [tensor], outputs=outputs, client_timeout=timeout)
    finally:
        client.close()
    answer: dict[str, Any] = {}
    for name in request["outputs"]:
        values = result.as_numpy(name).reshape(-1).tolist()
        answer[name] = [v.decode() if isinstance(v, bytes) else v for v in values]
    return {"version": result.get_response().model_version, "outputs": answer}


def flat(values: list[Any]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        out.extend(flat(v) if isinstance(v, list) else [v])
    return out


def call(host: str, http_port: int, grpc_port: int, request: dict[str, Any]) -> dict[str, Any]:
    """Both protocols; REST outputs flattened as gRPC's are."""
    over_rest = rest(f"http://{host}:{http_port}", request)
    over_rest["outputs"] = {k: flat(v) for k, v in over_rest["outputs"].items()}
    return {"rest": over_rest, "grpc": grpc(f"{host}:{grpc_port}", request)}


def main() -> None:
    job = json.loads(sys.argv[1])
    answers = {
        key: call(target["host"], target["http"], target["grpc"], target["request"])
        for key, target in job.items()
    }
    print(json.dumps(answers), flush=True)


if __name__ == "__main__":
    main()
