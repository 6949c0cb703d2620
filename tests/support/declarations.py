"""Model folders with a declaration, made in a test's tmp_path."""

from __future__ import annotations

import copy
import hashlib
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import yaml

from tests.support.server import MODELYARD

MODEL_BYTES = b"not a real model: validation never deserialises it\n"

PREDICTOR_PY = """\
import numpy as np


class Scorer:
    def __init__(self, threshold=0.5):
        self.threshold = threshold

    def load(self, artifacts_dir):
        self.folder = artifacts_dir

    def preprocess(self, inputs):
        return np.asarray(inputs, dtype=np.float64)

    def predict(self, instances):
        return instances.sum(axis=1, keepdims=True)

    def postprocess(self, predictions):
        return {"score": predictions}
"""

# A declaration using every top-level key, valid in a folder made by `model_folder`.
BASE: dict[str, Any] = {
    "name": "scorer",
    "version": "1.0.0",
    "runtime": "predictor",
    "predictor": "predictor.py:Scorer",
    "model": {
        "uri": "model.bin",
        "sha256": hashlib.sha256(MODEL_BYTES).hexdigest(),
        "versions": {"scikit-learn": version("scikit-learn")},
        "parameters": {"threshold": 0.5},
    },
    "inputs": [{"name": "x", "datatype": "FP64", "shape": [-1, 2]}],
    "outputs": [{"name": "score", "datatype": "FP64", "shape": [-1, 1]}],
    "features": {
        "sql": "features.sql",
        "source": "${FEATURES_DB_URL:-sqlite:///features.db}",
        "key": "user_id",
        "preprocess": "preprocess.pkl",
    },
    "predictions": {
        "columns": {"user_id": "BYTES", "score": "FP32"},
        "schedule": "0 3 * * *",
        "store": "${PREDICTIONS_DB_URL:-sqlite:///predictions.db}",
        "shards": 2,
    },
    "serving": {"max_batch_size": 8, "max_batch_time_ms": 2, "workers": 0, "max_message_mb": 16},
    "deployment": {
        "replicas": {"min": 1, "max": 3},
        "resources": {
            "cpu": "500m",
            "memory": "1Gi",
            "gpu": {"type": "nvidia-tesla-t4", "count": 1},
        },
        "autoscaling": {"metric": "requests-in-flight", "target": 10},
        "nodeSelector": {"pool": "inference"},
        "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "environments": {
            "staging": {"replicas": {"min": 1, "max": 1}},
            "production": {"replicas": {"min": 3, "max": 10}, "resources": {"cpu": "2"}},
        },
    },
    "monitoring": {"payload_sample_rate": 0.1},
    "example": {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 2], "data": [0.5, 1.5]}]},
}

# A declaration with several mistakes, and the pointer and message of each.
SEVERAL = """\
nmae: scorer
version: 2
runtime: predictor
predictor: predictor.py:Nope
model:
  uri: ../outside.bin
inputs:
  - {name: x, datatype: FLOAT, shape: [-1, 2]}
predictions:
  columns: {score: FP32}
  schedule: every day
deployment:
  replicas: {min: 3, max: 1}
"""
SEVERAL_EXPECTED = {
    "/name": "missing",
    "/nmae": "did you mean 'name'?",
    "/version": "quotes",
    "/predictor": "has no class Nope",
    "/model/uri": "outside the model folder",
    "/inputs/0/datatype": "did you mean 'FP32'?",
    "/predictions/schedule": "not a five-field cron",
    "/deployment/replicas": "min 3 is more than max 1",
}


def base() -> dict[str, Any]:
    return copy.deepcopy(BASE)


def model_folder(folder: Path, declaration: dict[str, Any] | str | None = None) -> Path:
    """A model folder holding BASE's files and ``declaration`` (BASE when None) as
    model.yaml; a string is written as is."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "predictor.py").write_text(PREDICTOR_PY)
    (folder / "model.bin").write_bytes(MODEL_BYTES)
    (folder / "features.sql").write_text("SELECT user_id, a, b FROM users\n")
    (folder / "preprocess.pkl").write_bytes(b"a fitted transformer would be here\n")
    decl = base() if declaration is None else declaration
    text = decl if isinstance(decl, str) else yaml.safe_dump(decl, sort_keys=False)
    (folder / "model.yaml").write_text(text)
    return folder


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`modelyard ARGS...` in a subprocess, as a user runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLSERVER")}
    return subprocess.run(
        [MODELYARD, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )


def run_pytest(folder: Path) -> subprocess.Popen[str]:
    """A generated folder's own tests, started in a subprocess (wait with communicate())."""
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder)],
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
