"""What every peer server has: its command, its protocols, its request body, its
readiness (a real prediction answered), and `stop()` (its whole process group)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import requests

from benchmarks.load import datasets, rest_body
from tests.support.server import ServerProcess

HERE = Path(__file__).resolve().parent


@dataclass
class Peer(ServerProcess):
    """A server started on ``directory`` (the benchmark's model-settings folders, each
    artifact by absolute path) with ``workers`` processes or replicas."""

    workers: int = 1
    name: ClassVar[str] = ""
    # The peer's settings for throughput, and where its documentation says so.
    settings: ClassVar[str] = ""
    protocols: ClassVar[tuple[str, ...]] = ("rest", "grpc")
    # Requests in the Open Inference Protocol (V2), or the peer's own JSON.
    v2: ClassVar[bool] = True
    # Prometheus metrics with grpc_server_handled_total (gRPC errors counted from them).
    grpc_metrics: ClassVar[bool] = False

    def rest_url(self, model: str) -> str:
        return f"{self.base}/v2/models/{model}/infer" if self.v2 else f"{self.base}/{model}"

    def body(self, rows: np.ndarray, datatype: str) -> str:
        if self.v2:
            return rest_body("input-0", rows, datatype)
        return json.dumps({"rows": rows.tolist()})

    def wait_ready(self, timeout: float = 180.0, path: str = "") -> None:
        """Until every model answers a one-row prediction (a peer's own health route
        says nothing of its models): or fail with its log."""
        headers = {"content-type": "application/json"}
        waiting = {model: self.body(rows[:1], datatype)
                   for model, (rows, datatype) in datasets().items()}  # fmt: skip
        deadline = time.monotonic() + timeout
        while waiting and time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            for model, body in list(waiting.items()):
                try:
                    r = requests.post(self.rest_url(model), data=body, headers=headers, timeout=5)
                    if r.status_code == 200:
                        del waiting[model]
                except (requests.ConnectionError, requests.Timeout):
                    pass
            time.sleep(0.5)
        if not waiting:
            return
        raise TimeoutError(f"{self.name} not ready after {timeout}s:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        """The process group, then whatever it started in sessions of its own (Ray's
        actors), so nothing of one peer runs on while the next is measured."""
        started = descendants(self.proc.pid) if self.proc is not None else []
        super().stop()
        for pid in started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def install(self) -> None:
        """Build the peer's virtualenv when missing (`make bench` does, once)."""


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # pid (comm) state ppid ...: comm may hold spaces, so split after it.
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out
