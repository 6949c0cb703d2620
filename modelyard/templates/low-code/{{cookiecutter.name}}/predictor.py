"""The predictor of {{ cookiecutter.name }}, served by modelyard's predictor runtime.

The runtime creates the class once, calls load() with this folder, then for every
request runs postprocess(predict(preprocess(inputs))). preprocess and postprocess
are optional. Replace the linear scorer below with your model.

A request your code cannot take is answered with a 400 carrying your message when
you raise modelyard_runtimes.errors.BadRequest("what is wrong, and what to send");
anything else raised is a 500 naming the request id, with the traceback in the
server's log under it.
"""

import json
from pathlib import Path

import numpy as np


class {{ cookiecutter.class_name }}:
    def load(self, artifacts_dir: str) -> None:
        """Read the trained model from the folder, once, before any request.

        With a scikit-learn model: self.model = joblib.load(Path(artifacts_dir) / "model.joblib")
        """
        params = json.loads((Path(artifacts_dir) / "weights.json").read_text())
        self.weights = np.asarray(params["weights"], dtype=np.float64)
        self.bias = float(params["bias"])

    def preprocess(self, inputs: np.ndarray) -> np.ndarray:
        """The request's input-0 (a numpy array; a DataFrame when there are several
        inputs) -> what predict() takes: here one row of floats per instance."""
        return np.asarray(inputs, dtype=np.float64).reshape(len(inputs), -1)

    def predict(self, instances: np.ndarray) -> np.ndarray:
        """One score per instance."""
        return instances @ self.weights + self.bias

    def postprocess(self, predictions: np.ndarray) -> dict[str, np.ndarray]:
        """The scores -> the declared outputs, by name, one row per instance."""
        scores = predictions.reshape(-1, 1)
        return {"label": (scores > 0).astype(np.int64), "score": scores}
