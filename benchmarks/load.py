"""Load generators and the servers they are pointed at, shared by the benchmarks."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import requests

from tests.support.protoshim import share_v2_protos

share_v2_protos()  # before anything imports MLServer

import tritonclient.grpc as grpcclient  # noqa: E402
from tritonclient.grpc import service_pb2  # noqa: E402

from modelyard.declarations.folders import settings_dict  # noqa: E402
from tests.support.server import ServerProcess  # noqa: E402

HERE = Path(__file__).resolve().parent
# What a model folder may hold that neither server loads.
NOT_MODEL_FILES = ("model.yaml", "README.md", "k8s", "predictions.db*", "__pycache__")


@dataclass
class Load:
    """One closed-loop run against one server."""

    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    first_error: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


class PlainMLServer(ServerProcess):
    """`mlserver start` with MLServer's own defaults: the alternative we measure against."""

    def command(self) -> list[str]:
        return [str(Path(sys.executable).parent / "mlserver"), "start", str(self.directory)]

    def start(self) -> PlainMLServer:
        self.env.update(
            MLSERVER_HTTP_PORT=str(self.http_port),
            MLSERVER_GRPC_PORT=str(self.grpc_port),
            MLSERVER_METRICS_PORT=str(self.metrics_port),
        )
        super().start()
        return self


def plain_model_dir(folders: list[Path], out: Path, **settings: object) -> Path:
    """Each folder as a plain MLServer model-settings.json (``settings`` added), next to a
    copy of the folder's files (the features query, the predictor...) and with the
    artifact by absolute path, so both servers load exactly the same settings."""
    for folder in folders:
        _, data = settings_dict(folder)
        data.update(settings)
        params = data.setdefault("parameters", {})
        if params.get("uri") and "://" not in params["uri"]:
            params["uri"] = str((folder / params["uri"]).resolve())
        target = out / folder.name
        shutil.copytree(folder, target, ignore=shutil.ignore_patterns(*NOT_MODEL_FILES))
        (target / "model-settings.json").write_text(json.dumps(data, indent=2))
    return out


def datasets() -> dict[str, tuple[np.ndarray, str]]:
    """The benchmark's rows of each model (1,000, repeated from the data set) and their
    V2 datatype."""
    from sklearn.datasets import load_breast_cancer, load_iris

    iris = load_iris().data.astype(np.float64)
    cancer = load_breast_cancer().data.astype(np.float32)
    return {
        "iris": (np.resize(iris, (1000, 4)), "FP64"),
        "breast-cancer": (np.resize(cancer, (1000, 30)), "FP32"),
    }


def rest_body(name: str, array: np.ndarray, datatype: str) -> str:
    return json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "datatype": datatype,
                    "shape": list(array.shape),
                    "data": array.ravel().tolist(),
                }
            ]
        }
    )


def grpc_body(model: str, name: str, array: np.ndarray, datatype: str) -> bytes:
    """The ModelInferRequest tritonclient would send, serialised."""
    inp = grpcclient.InferInput(name, list(array.shape), datatype)
    inp.set_data_from_numpy(array)
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.extend([inp._get_tensor()])
    if inp._get_content() is not None:
        request.raw_input_contents.extend([inp._get_content()])
    return request.SerializeToString()


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    return float(match.group(1)) * _UNITS[match.group(2)] if match else float("nan")


def wrk(url: str, body: str, connections: int, duration: float) -> Load:
    """wrk, closed loop: `connections` connections each with one request in flight."""
    with tempfile.TemporaryDirectory() as tmp:
        body_path = Path(tmp) / "body.json"
        body_path.write_text(body)
        script = Path(tmp) / "post.lua"
        script.write_text(
            'wrk.method = "POST"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            f'local f = io.open("{body_path}", "r")\n'
            'wrk.body = f:read("*a")\nf:close()\n'
        )
        seconds = f"{max(1, round(duration))}s"
        out = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{seconds}", "--latency", "-s", str(script), url],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    requests_done = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non_2xx.group(1)) if non_2xx else 0) + (
        sum(int(g) for g in socket.groups()) if socket else 0
    )
    return Load(
        rps=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        p50_ms=_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)),  # type: ignore[union-attr]
        p99_ms=_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)),  # type: ignore[union-attr]
        requests=requests_done,
        errors=errors,
    )


GRPC_PATH = "/inference.GRPCInferenceService/ModelInfer"


def grpc_errors(metrics_url: str) -> int:
    """ModelInfer calls the server answered with a gRPC status other than OK: a gRPC error
    travels in HTTP/2 trailers of a 200 response, which an HTTP load tool counts as success."""
    text = requests.get(metrics_url, timeout=10).text
    total = 0.0
    for line in text.splitlines():
        ours = line.startswith("grpc_server_handled_total{") and 'grpc_method="ModelInfer"' in line
        if ours and 'grpc_code="OK"' not in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def h2load_grpc(target: str, body: bytes, concurrency: int, duration: float,
                metrics_url: str | None) -> Load:  # fmt: skip
    """h2load, closed loop over HTTP/2 with gRPC framing: `concurrency` connections, one
    call in flight on each (as wrk does for REST); latencies from its per-request log.
    Without ``metrics_url`` (a server with no gRPC metrics), errors are those h2load
    sees: a gRPC status in the trailers of a 200 is not among them."""
    errors_before = grpc_errors(metrics_url) if metrics_url else 0
    with tempfile.TemporaryDirectory() as tmp:
        framed = Path(tmp) / "body.grpc"
        # A gRPC message: no compression, 4-byte big-endian length, the protobuf.
        framed.write_bytes(b"\x00" + len(body).to_bytes(4, "big") + body)
        log = Path(tmp) / "requests.log"
        seconds = f"{max(1, round(duration))}"
        out = subprocess.run(
            ["h2load", "-D", seconds, "-c", str(concurrency), "-m", "1", "-d", str(framed),
             "-H", "content-type: application/grpc", "-H", "te: trailers",
             f"--log-file={log}", f"http://{target}{GRPC_PATH}"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        durations = (
            np.array(
                [int(line.split("\t")[2]) for line in log.read_text().splitlines() if line.strip()]
            )
            / 1000.0
        )
    counts = re.search(r"(\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", out)
    failed = sum(int(g) for g in counts.groups()[1:]) if counts else 0
    errors = failed + (grpc_errors(metrics_url) if metrics_url else 0) - errors_before
    return Load(
        rps=len(durations) / float(seconds),
        p50_ms=float(np.percentile(durations, 50)) if len(durations) else float("nan"),
        p99_ms=float(np.percentile(durations, 99)) if len(durations) else float("nan"),
        requests=len(durations),
        errors=errors,
    )


def grpc_load(target: str, body: bytes, concurrency: int, duration: float) -> Load:
    with tempfile.NamedTemporaryFile(suffix=".bin") as f:
        f.write(body)
        f.flush()
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.grpc_load", "--target", target, "--body", f.name,
             "--concurrency", str(concurrency), "--duration", str(duration)],
            capture_output=True, text=True, check=True, cwd=HERE.parent,
        ).stdout  # fmt: skip
    return Load(**json.loads(out))


def calls_per_s(call: Callable[[], object], seconds: float = 2.0) -> float:
    """How many times a second ``call`` runs in this process, after five warm-up calls."""
    for _ in range(5):
        call()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        call()
        calls += 1
    return calls / (time.perf_counter() - start)
