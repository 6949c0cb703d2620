"""The model of {{ cookiecutter.name }}: an mlserver.MLModel that takes a V2 request and
answers a V2 response. Replace the linear scorer with your model."""

import json
from pathlib import Path

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.errors import InferenceError
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri

INPUT = "input-0"
FEATURES = 4


class Model(MLModel):
    async def load(self) -> bool:
        """Read the artifact named by model.uri, once, before any request."""
        params = json.loads(Path(await get_model_uri(self.settings)).read_text())
        self.weights = np.asarray(params["weights"], dtype=np.float64)
        self.bias = float(params["bias"])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        rows = self._rows(payload)
        scores = (rows @ self.weights + self.bias).reshape(-1, 1)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[
                NumpyCodec.encode_output("label", (scores > 0).astype(np.int64)),
                NumpyCodec.encode_output("score", scores),
            ],
        )

    def _rows(self, payload: InferenceRequest) -> np.ndarray:
        """The request's rows of features; a request that has none is the client's error (400)."""
        given = {i.name: i for i in payload.inputs}
        if INPUT not in given:
            raise InferenceError(
                f"model '{self.name}': missing input '{INPUT}'; send it as FP64 rows of "
                f"{FEATURES} values"
            )
        rows = np.asarray(NumpyCodec.decode_input(given[INPUT]), dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != FEATURES:
            raise InferenceError(
                f"model '{self.name}': input '{INPUT}' has shape {list(rows.shape)}; "
                f"expected [-1, {FEATURES}]"
            )
        return rows
