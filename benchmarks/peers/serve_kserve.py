"""KServe's ModelServer serving the benchmark's models: one `kserve.Model` per model,
V2 over REST and gRPC, `ModelServer(workers=N)` as KServe documents for using N cores.

Run by the kserve virtualenv's python: serve_kserve.py MODELS HTTP_PORT GRPC_PORT WORKERS
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

from artifacts import Predict, load
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer


class Peer(Model):  # type: ignore[misc]
    def __init__(self, name: str, predict: Predict):
        super().__init__(name)
        self._predict = predict
        self.ready = True

    def predict(self, payload: InferRequest, headers: dict | None = None) -> InferResponse:
        classes = self._predict(payload.inputs[0].as_numpy())
        out = InferOutput(name="predict", shape=list(classes.shape), datatype="INT64")
        out.set_data_from_numpy(classes)
        return InferResponse(
            model_name=self.name, infer_outputs=[out], response_id=payload.id or str(uuid.uuid4())
        )


def main() -> None:
    models, http_port, grpc_port, workers = sys.argv[1:5]
    peers = [Peer(name, predict) for name, predict in load(Path(models)).items()]
    server = ModelServer(
        http_port=int(http_port), grpc_port=int(grpc_port), workers=int(workers),
        enable_grpc=True,
    )  # fmt: skip
    server.start(peers)


if __name__ == "__main__":
    main()
