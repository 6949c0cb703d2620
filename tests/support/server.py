"""A real `modelyard serve` in a subprocess on free ports, for tests and benchmarks."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]
MODELYARD = str(Path(sys.executable).parent / "modelyard")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    """A server started by `start()`; `stop()` ends its whole process group."""

    directory: Path
    log_path: Path
    extra_args: Sequence[str] = ()
    env: dict[str, str] = field(default_factory=dict)
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    # The working directory: `python -m modelyard` in it imports the modelyard found there.
    cwd: Path | None = None
    # Served over TLS: the CA that signed its certificate (`tests/support/tls.py`).
    ca: Path | None = None
    proc: subprocess.Popen | None = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def base(self) -> str:
        return f"{'https' if self.ca else 'http'}://{self.http_url}"

    @property
    def verify(self) -> str | bool:
        """``requests``' ``verify`` for this server."""
        return str(self.ca) if self.ca else True

    def command(self) -> list[str]:
        return [
            MODELYARD, "serve", str(self.directory),
            "--http-port", str(self.http_port),
            "--grpc-port", str(self.grpc_port),
            "--metrics-port", str(self.metrics_port),
            *self.extra_args,
        ]  # fmt: skip

    def start(self) -> ServerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLSERVER")}
        env.update(self.env)
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self.command(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.cwd,
            start_new_session=True,
        )
        return self

    def wait_ready(self, timeout: float = 90.0, path: str = "/v2/health/ready") -> None:
        """Poll until the server answers 200 on `path`, or fail with its log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if requests.get(self.base + path, timeout=1, verify=self.verify).status_code == 200:
                    return
            except (requests.ConnectionError, requests.Timeout):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready on {path} after {timeout}s:\n{self.log()}")

    def status(self) -> dict:
        return requests.get(self.base + "/modelyard/status", timeout=5).json()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._log.close()


@contextmanager
def running(server: ServerProcess) -> Iterator[ServerProcess]:
    """Start ``server``, wait until it is ready, stop it afterwards; its log is printed
    when anything goes wrong on the way (pytest shows it with the failure)."""
    server.start()
    try:
        server.wait_ready()
        yield server
    except BaseException:
        print(server.log())
        raise
    finally:
        server.stop()


def copy_model(name: str, dest: Path) -> Path:
    """Copy a folder of the repo's model-settings/ into `dest`, artifacts included."""
    target = dest / name
    shutil.copytree(REPO / "model-settings" / name, target)
    return target
