"""A BentoML service serving the benchmark's models: one `@bentoml.api` per model,
`@bentoml.service(workers=N)` as BentoML documents for using N cores, REST only
(BentoML serves its APIs over HTTP; it has no gRPC in its 1.2+ service API).

The request is BentoML's natural JSON, the API's arguments by name: {"rows": [[...], ...]}.
Served by `bentoml serve serve_bentoml:Peers`, with PEER_MODELS and PEER_WORKERS set.
"""

from __future__ import annotations

import os
from pathlib import Path

import bentoml
import numpy as np
from artifacts import load

WORKERS = int(os.environ.get("PEER_WORKERS", "1"))


@bentoml.service(workers=WORKERS)
class Peers:
    def __init__(self) -> None:
        self.models = load(Path(os.environ["PEER_MODELS"]))

    @bentoml.api(route="/iris")  # type: ignore[untyped-decorator]
    def iris(self, rows: list[list[float]]) -> list[int]:
        return self.models["iris"](np.asarray(rows, dtype=np.float64)).tolist()

    @bentoml.api(route="/breast-cancer")  # type: ignore[untyped-decorator]
    def breast_cancer(self, rows: list[list[float]]) -> list[int]:
        return self.models["breast-cancer"](np.asarray(rows, dtype=np.float32)).tolist()
