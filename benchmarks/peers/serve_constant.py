"""The transport limit: Python's HTTP and gRPC stacks answering a constant response,
no model, no parsing of the request: how fast this machine serves calls at all.

REST is uvicorn (uvloop, httptools: the stack MLServer, KServe, BentoML and Ray Serve's
proxy run on) with a bare ASGI app, `--workers N`; gRPC is N grpcio aio servers on one
port (grpcio sets SO_REUSEPORT), each answering ModelInfer with the same bytes.
Run by the project's python: serve_constant.py HTTP_PORT GRPC_PORT PROCESSES
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sys
from typing import Any

import grpc
import uvicorn

# A V2 answer of one class, as the models' 1-row answers look.
REST_ANSWER = (
    b'{"model_name":"constant","outputs":[{"name":"predict","datatype":"INT64",'
    b'"shape":[1],"data":[0]}]}'
)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:  # read the body, as a server must before it answers
        more = (await receive()).get("more_body", False)
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": REST_ANSWER})


def grpc_answer() -> bytes:
    from tritonclient.grpc import service_pb2

    response = service_pb2.ModelInferResponse(model_name="constant")
    response.outputs.add(name="predict", datatype="INT64", shape=[1])
    response.raw_output_contents.append((0).to_bytes(8, "little"))
    return response.SerializeToString()


def serve_grpc(port: int) -> None:
    answer = grpc_answer()

    async def infer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return answer

    async def run() -> None:
        server = grpc.aio.server()
        handler = grpc.unary_unary_rpc_method_handler(infer)  # bytes in, bytes out
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(
                "inference.GRPCInferenceService", {"ModelInfer": handler}
            ),)
        )  # fmt: skip
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(run())


def main() -> None:
    http_port, grpc_port, processes = (int(a) for a in sys.argv[1:4])
    for _ in range(processes):
        multiprocessing.Process(target=serve_grpc, args=(grpc_port,), daemon=True).start()
    uvicorn.run(
        "serve_constant:app", host="127.0.0.1", port=http_port, workers=processes,
        access_log=False, log_level="warning",
    )  # fmt: skip


if __name__ == "__main__":
    main()
