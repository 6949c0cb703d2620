"""A real MLflow tracking server for tests: ``mlflow server`` on loopback with a SQLite
backend and a local artifact root, and helpers to register model versions and point an
alias at one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import requests

from tests.support.server import free_port


@contextmanager
def mlflow_server(root: Path) -> Iterator[str]:
    """``mlflow server`` storing under ``root``; its URL while the block runs."""
    port = free_port()
    log = (root / "mlflow.log").open("wb")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"), "server",
            "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--default-artifact-root", str(root / "artifacts"),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if requests.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((root / "mlflow.log").read_text(errors="replace"))
            time.sleep(0.5)
        yield url
    finally:
        # mlflow server's workers take their time over SIGTERM: then they are killed.
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()


def register(url: str, model: Any, x: np.ndarray, y: np.ndarray, name: str) -> str:
    """Log the sklearn ``model`` (fitted on ``x``, ``y``) to the tracking server as a new
    version of ``name``; its version."""
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature

    mlflow.set_tracking_uri(url)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mlflow.start_run():
            info = mlflow.sklearn.log_model(
                model, name="model", registered_model_name=name,
                signature=infer_signature(x, y),
            )  # fmt: skip
    return str(info.registered_model_version)


def point_alias(url: str, name: str, version: str, alias: str = "champion") -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(url).set_registered_model_alias(name, alias, version)
