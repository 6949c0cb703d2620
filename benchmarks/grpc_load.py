"""Closed-loop gRPC load on a V2 ModelInfer endpoint, run as its own process.

Each of `--concurrency` callers sends the same pre-serialised request (as built by
tritonclient) back to back for `--duration` seconds over one channel per caller;
prints one JSON line: requests, errors, requests/s and latency percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import grpc
import numpy as np

METHOD = "/inference.GRPCInferenceService/ModelInfer"


async def caller(
    target: str, body: bytes, stop_at: float, latencies: list[float], errors: list[str]
) -> None:
    async with grpc.aio.insecure_channel(
        target,
        options=[
            ("grpc.max_receive_message_length", 256 << 20),
            ("grpc.max_send_message_length", 256 << 20),
        ],
    ) as channel:
        call = channel.unary_unary(METHOD)
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            try:
                await call(body)
            except grpc.aio.AioRpcError as e:
                errors.append(f"{e.code().name}: {e.details()}")
                continue
            latencies.append(time.perf_counter() - start)


async def main_async(args: argparse.Namespace) -> dict:
    with open(args.body, "rb") as f:
        body = f.read()
    latencies: list[float] = []
    errors: list[str] = []
    start = time.perf_counter()
    stop_at = start + args.duration
    await asyncio.gather(
        *[caller(args.target, body, stop_at, latencies, errors) for _ in range(args.concurrency)]
    )
    elapsed = time.perf_counter() - start
    lat = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    return {
        "requests": len(latencies) + len(errors),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "rps": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--body", required=True, help="a serialised ModelInferRequest")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main_async(args))))


if __name__ == "__main__":
    main()
