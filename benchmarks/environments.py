"""`make bench`'s environments part: what the worker hop costs a model on packages of
its own (`docs/environments.md`).

One `modelyard serve` (one process) serves the iris model twice: in process, and from a
copy with a requirements.txt (a tiny pin), so answered by a worker on its environment.
1-row calls over REST (wrk) and gRPC (h2load) at 1 and 16 connections go to each.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from sklearn.datasets import load_iris

from benchmarks.load import grpc_body, h2load_grpc, rest_body, wrk
from tests.support.server import REPO, ServerProcess

CONCURRENCIES = (1, 16)
ENVS = Path.home() / ".cache" / "modelyard" / "bench-envs"


def _folder(root: Path, name: str, requirements: str | None) -> None:
    folder = root / name
    shutil.copytree(REPO / "model-settings/iris", folder)
    declaration = folder / "model.yaml"
    declaration.write_text(declaration.read_text().replace("name: iris", f"name: {name}", 1))
    if requirements is not None:
        (folder / "requirements.txt").write_text(requirements)


def environments(args: argparse.Namespace, tmp: Path) -> dict:
    models = tmp / "models"
    _folder(models, "iris-in-process", None)
    _folder(models, "iris-own-env", "six==1.16.0\n")
    server = ServerProcess(
        models, tmp / "server.log", ("--processes", "1"), env={"MODELYARD_ENVS_DIR": str(ENVS)}
    ).start()
    rows = []
    array = load_iris().data[:1].astype(np.float64)
    try:
        server.wait_ready(timeout=300)
        metrics = f"http://{server.http_url.split(':')[0]}:{server.metrics_port}/metrics"
        for model in ("iris-in-process", "iris-own-env"):
            for c in CONCURRENCIES:
                rest = wrk(
                    f"{server.base}/v2/models/{model}/infer",
                    rest_body("input-0", array, "FP64"),
                    c,
                    args.duration,
                )
                grpc = h2load_grpc(
                    server.grpc_url,
                    grpc_body(model, "input-0", array, "FP64"),
                    c,
                    args.duration,
                    metrics,
                )
                for protocol, load in (("REST", rest), ("gRPC", grpc)):
                    rows.append({"model": model, "protocol": protocol, "concurrency": c,
                                 **load.as_dict()})  # fmt: skip
    finally:
        server.stop()
    print("\nenvironments: iris 1-row calls, in process vs a worker on its own environment:")
    for row in rows:
        print(f"  {row['model']:16} {row['protocol']:4} c{row['concurrency']:<3}"
              f"{row['rps']:8.0f} req/s  p50 {row['p50_ms']:6.2f} ms  p99 {row['p99_ms']:6.2f} ms"
              f"  errors {row['errors']}")  # fmt: skip
    return {"rows": rows}
