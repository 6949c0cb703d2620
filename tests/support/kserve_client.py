"""Runs in the KServe SDK's own virtualenv (`tests/support/kserve_sdk.py`), not the
project's: the SDK's REST and gRPC clients call a server as a KServe user's code would.

Reads a JSON job on stdin: ``{"rest": "http://host:port", "grpc": "host:port",
"requests": [{"model": NAME, "inputs": [{"name", "datatype", "shape", "data"}]}]}``;
prints, per protocol, the health answers and each request's outputs as JSON.
"""

import asyncio
import json
import sys
from typing import Any

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64,
          "BYTES": np.object_, "BOOL": np.bool_}  # fmt: skip


def request(spec: dict[str, Any]) -> InferRequest:
    inputs = []
    for tensor in spec["inputs"]:
        data = tensor["data"]
        if tensor["datatype"] == "BYTES":
            data = [d.encode() for d in data]
        array = np.array(data, dtype=DTYPES[tensor["datatype"]]).reshape(tensor["shape"])
        infer_input = InferInput(tensor["name"], list(array.shape), tensor["datatype"])
        infer_input.set_data_from_numpy(array)  # binary tensor data over REST
        inputs.append(infer_input)
    return InferRequest(model_name=spec["model"], infer_inputs=inputs)


def outputs(response: Any) -> list[dict[str, Any]]:
    answer = []
    for output in response.outputs:
        array = output.as_numpy()
        data = [v.decode() if isinstance(v, bytes) else v for v in array.ravel().tolist()]
        answer.append(
            {"name": output.name, "datatype": output.datatype, "shape": list(array.shape),
             "data": data}
        )  # fmt: skip
    return answer


async def rest(job: dict[str, Any]) -> dict[str, Any]:
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
    base = job["rest"]
    live = await client.is_server_live(base)
    ready = await client.is_server_ready(base)
    answers = []
    for spec in job["requests"]:
        answers.append(outputs(await client.infer(base, request(spec), model_name=spec["model"])))
    await client.close()
    return {"live": live, "ready": ready, "answers": answers}


async def grpc(job: dict[str, Any]) -> dict[str, Any]:
    client = InferenceGRPCClient(job["grpc"], retries=0)
    live = await client.is_server_live()
    ready = await client.is_server_ready()
    answers = [outputs(await client.infer(request(spec))) for spec in job["requests"]]
    await client.close()
    return {"live": live, "ready": ready, "answers": answers}


async def main() -> None:
    job = json.load(sys.stdin)
    print(json.dumps({"rest": await rest(job), "grpc": await grpc(job)}))


if __name__ == "__main__":
    asyncio.run(main())
