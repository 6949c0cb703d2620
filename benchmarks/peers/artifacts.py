"""The benchmark's two models loaded from their files, for the peers' servers.

Imported by the servers in the peers' own virtualenvs (next to this file), so it needs
only the model libraries: iris is scikit-learn's joblib file, breast-cancer XGBoost's
model.ubj, at the paths the model-settings.json files of the benchmark's model
folder name (the same files modelyard and MLServer load).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

Predict = Callable[[np.ndarray], np.ndarray]
MODELS = ("iris", "breast-cancer")


def load(models: Path) -> dict[str, Predict]:
    """Each model's ``predict`` on a 2-D array of rows: its classes, as int64."""
    out: dict[str, Predict] = {}
    for name in MODELS:
        settings = json.loads((models / name / "model-settings.json").read_text())
        uri = settings["parameters"]["uri"]
        if uri.endswith(".joblib"):
            import joblib

            estimator = joblib.load(uri)
        else:
            import xgboost

            estimator = xgboost.XGBClassifier()
            estimator.load_model(uri)
        out[name] = Classes(estimator)
    return out


class Classes:
    """An estimator's predicted classes as int64; picklable, for servers that start
    their workers by spawning (KServe's)."""

    def __init__(self, estimator: Any):
        self.estimator = estimator

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.estimator.predict(rows)).astype(np.int64)
