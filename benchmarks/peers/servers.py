"""The peers: modelyard itself, MLServer (default and tuned), KServe's ModelServer,
BentoML, Ray Serve, and the constant servers of the transport limit."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from benchmarks.load import PlainMLServer
from benchmarks.peers.peer import HERE, Peer
from benchmarks.peers.venv import ensure_venv

KSERVE = "kserve==0.21.0"
BENTOML = "bentoml==1.4.40"
RAY = "ray[serve]==2.60.0"


@dataclass
class Modelyard(Peer):
    name = "modelyard"
    settings = "defaults (`modelyard serve --no-watch`: one process per core, Go gRPC front end)"
    grpc_metrics = True

    def command(self) -> list[str]:
        return [*super().command(), "--no-watch"]


@dataclass
class MLServer(Peer, PlainMLServer):
    name = "mlserver"
    settings = "MLServer 1.7.1's defaults (`mlserver start`, parallel_workers 1)"
    grpc_metrics = True


@dataclass
class MLServerTuned(MLServer):
    """MLServer's docs: parallel inference pays off for models heavy enough to outweigh
    the hop to a worker; these are light, so inference in the server's process."""

    name = "mlserver-tuned"
    settings = "MLSERVER_PARALLEL_WORKERS=0 (inference in the server's own process)"

    def start(self) -> MLServerTuned:
        self.env["MLSERVER_PARALLEL_WORKERS"] = "0"
        super().start()
        return self


@dataclass
class MLServerWorkers(MLServer):
    """Seldon's performance guide: parallel_workers in line with the cores the server has."""

    name = "mlserver-workers"
    settings = "MLSERVER_PARALLEL_WORKERS=N (a worker process per core, Seldon's tuning guide)"

    def start(self) -> MLServerWorkers:
        self.env["MLSERVER_PARALLEL_WORKERS"] = str(self.workers)
        super().start()
        return self


@dataclass
class KServe(Peer):
    name = "kserve"
    settings = "kserve 0.21.0 ModelServer(workers=N), V2 REST and gRPC, kserve.Model per model"

    def install(self) -> None:
        ensure_venv("kserve", KSERVE)

    def command(self) -> list[str]:
        python = ensure_venv("kserve", KSERVE)
        return [str(python), str(HERE / "serve_kserve.py"), str(self.directory),
                str(self.http_port), str(self.grpc_port), str(self.workers)]  # fmt: skip


@dataclass
class BentoML(Peer):
    name = "bentoml"
    settings = "bentoml 1.4.40 @bentoml.service(workers=N), one @bentoml.api per model"
    protocols = ("rest",)
    v2 = False

    def install(self) -> None:
        ensure_venv("bentoml", BENTOML)

    def command(self) -> list[str]:
        bentoml = ensure_venv("bentoml", BENTOML).parent / "bentoml"
        return [str(bentoml), "serve", "serve_bentoml:Peers", "--host", "127.0.0.1",
                "--port", str(self.http_port)]  # fmt: skip

    def start(self) -> BentoML:
        self.cwd = HERE
        self.env.update(PEER_MODELS=str(self.directory), PEER_WORKERS=str(self.workers))
        super().start()
        return self


@dataclass
class RayServe(Peer):
    name = "ray"
    settings = (
        "ray[serve] 2.60.0, a deployment per model, num_replicas=N, max_ongoing_requests=32,"
        " access logs off"
    )
    protocols = ("rest",)
    v2 = False

    def install(self) -> None:
        ensure_venv("ray", RAY)

    def command(self) -> list[str]:
        python = ensure_venv("ray", RAY)
        sessions = self.log_path.parent / "ray"
        return [str(python), str(HERE / "serve_ray.py"), str(self.directory),
                str(self.http_port), str(self.workers), str(sessions)]  # fmt: skip


@dataclass
class Constant(Peer):
    """No model: the transport limit (serve_constant.py)."""

    name = "constant"
    settings = "uvicorn with a bare ASGI app (--workers N); N grpcio aio servers on one port"

    def command(self) -> list[str]:
        return [sys.executable, str(HERE / "serve_constant.py"), str(self.http_port),
                str(self.grpc_port), str(self.workers)]  # fmt: skip

    def start(self) -> Constant:
        self.cwd = HERE
        super().start()
        return self


# Measured in this order; the first is ours, the last the transport limit.
PEERS: tuple[type[Peer], ...] = (
    Modelyard, MLServer, MLServerTuned, MLServerWorkers, KServe, BentoML, RayServe,
)  # fmt: skip
MODEL_PEERS = tuple(p for p in PEERS if p is not Modelyard)
